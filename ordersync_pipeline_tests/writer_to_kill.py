"""A process that rewrites one day over and over, for test_atomicity to kill with SIGKILL mid-write."""

import datetime as dt
import sys

import duckdb

from ordersync_pipeline.normalise import normalise_order_statuses
from ordersync_pipeline.storage.schema import ensure_schema
from ordersync_pipeline.storage.warehouse import DayLoad, replace_days

DAY = dt.date(2025, 12, 3)
VERSIONS = {  # fetched_at hour -> (lines, status): each version of the day is recognisable
    1: (400, "processing"),
    2: (2500, "delivered"),
}


def version(hour: int) -> DayLoad:
    lines, status = VERSIONS[hour]
    fetched_at = dt.datetime(2025, 12, 10, hour, tzinfo=dt.timezone.utc)
    records = [{"order_status_id": f"L{n}", "order_id": f"O{n}", "order_date": f"{DAY}T{n % 24:02d}:00:00+00:00",
                "status": status, "supplier": "ping"} for n in range(lines)]
    result = normalise_order_statuses(records, fetched_at=fetched_at, expected_day=DAY)
    return DayLoad(DAY, result.rows, result.rejects, lines, 0, 1, 1, 0, True, (), fetched_at)


def main(database: str) -> None:
    loads = [version(1), version(2)]
    conn = duckdb.connect(database)
    ensure_schema(conn)
    writes = 0
    while writes < 100_000:  # bounded; the test kills it long before
        replace_days(conn, [loads[writes % 2]])
        writes += 1
        print(f"wrote {writes}", flush=True)  # the test picks which write its kill lands in


if __name__ == "__main__":
    main(sys.argv[1])
