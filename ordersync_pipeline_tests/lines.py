"""Synthetic order lines and day loads for the warehouse tests (the `conn` fixture in conftest stores them)."""

import datetime as dt

from ordersync_pipeline.normalise import normalise_order_statuses
from ordersync_pipeline.storage.warehouse import DayLoad

DAY = dt.date(2025, 12, 3)


def line(n: int, status: str = "processing", day: dt.date = DAY) -> dict:
    return {"order_status_id": f"L{n}", "order_id": f"O{n // 2}", "po_number": f"PO{n // 2}",
            "order_date": f"{day}T10:{n:02d}:00+00:00", "status": status, "supplier": "titleist"}


def day_load(records: list[dict], fetched_at: dt.datetime, day: dt.date = DAY) -> DayLoad:
    result = normalise_order_statuses(records, fetched_at=fetched_at, expected_day=day)
    return DayLoad(day, result.rows, result.rejects, len(records), result.duplicates_dropped, 1, 1, 0, True,
                   result.extra_field_names, fetched_at)


def at(hour: int, day: int = 10) -> dt.datetime:
    return dt.datetime(2025, 12, day, hour, tzinfo=dt.timezone.utc)
