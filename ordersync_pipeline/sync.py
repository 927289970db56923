"""The steps a run takes, as plain functions: fetch and normalise a day; refresh open lines.

Client -> normalise -> warehouse, with no Dagster inside, so the benchmark and tests call the same code
the assets do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import polars as pl

from ordersync_pipeline.client import OrderSyncClient
from ordersync_pipeline.normalise import normalise_order_statuses
from ordersync_pipeline.warehouse import DayLoad, apply_refreshed_statuses, replace_days

# The statuses the reference and real feeds are known to use. Anything else is kept as sent, treated as
# an open line (it is not known to be finished) and reported by an asset check.
KNOWN_STATUSES = ("processing", "backordered", "shipped", "in_transit", "delivered", "cancelled")
CLOSED_STATUSES = ("delivered", "cancelled")


def fetch_day_load(client: OrderSyncClient, day: dt.date, *, pii_mode: str = "raw") -> DayLoad:
    """Every record of `day` from by-date, normalised and ready for warehouse.replace_days."""
    fetched_at = dt.datetime.now(dt.timezone.utc)
    fetch = client.fetch_order_statuses_for_day(day)
    normalised = normalise_order_statuses(fetch.records, fetched_at=fetched_at, expected_day=day, pii_mode=pii_mode)
    return DayLoad(
        day=day,
        rows=normalised.rows,
        rejects=normalised.rejects,
        api_total=fetch.api_total,
        duplicates_dropped=normalised.duplicates_dropped,
        pages_fetched=fetch.pages_fetched,
        paging_passes=fetch.passes,
        paging_duplicates=fetch.duplicates_seen,
        api_total_consistent=fetch.consistent,
        extra_field_names=normalised.extra_field_names,
        fetched_at=fetched_at,
        observed_at=fetch.observed_at,
    )


def fetch_day_loads(
    client: OrderSyncClient, days: list[dt.date], *, days_in_flight: int = 1, pii_mode: str = "raw"
) -> Iterator[DayLoad]:
    """DayLoads in day order, fetching up to `days_in_flight` days ahead while the caller stores one.

    Memory stays bounded by the window, whatever the range: a year's backfill holds a few days at a time.
    """
    if days_in_flight <= 1:
        yield from (fetch_day_load(client, day, pii_mode=pii_mode) for day in days)
        return
    pool = ThreadPoolExecutor(days_in_flight, thread_name_prefix="ordersync-day")
    pending: deque[Future[DayLoad]] = deque()
    upcoming = iter(days)
    try:
        for day in itertools.islice(upcoming, days_in_flight):
            pending.append(pool.submit(fetch_day_load, client, day, pii_mode=pii_mode))
        while pending:
            load = pending.popleft().result()
            next_day = next(upcoming, None)
            if next_day is not None:
                pending.append(pool.submit(fetch_day_load, client, next_day, pii_mode=pii_mode))
            yield load
    finally:
        # A failed or abandoned range: queued days never start, and the caller's error is not held up
        # waiting for days already in flight (they finish in the background).
        pool.shutdown(wait=False, cancel_futures=True)


def store_days(
    client: OrderSyncClient,
    conn: duckdb.DuckDBPyConnection,
    days: list[dt.date],
    *,
    days_in_flight: int,
    days_per_transaction: int,
    pii_mode: str,
) -> Iterator[DayLoad]:
    """Fetch `days` (a bounded window ahead) and replace them in the warehouse, yielding each once stored."""
    with contextlib.closing(fetch_day_loads(client, days, days_in_flight=days_in_flight, pii_mode=pii_mode)) as loads:
        while batch := list(itertools.islice(loads, days_per_transaction)):
            replace_days(conn, batch)
            yield from batch


@dataclass(frozen=True)
class RefreshResult:
    po_numbers_requested: int
    supplier_orders_requested: int
    lines_returned: int
    lines_updated: int
    rejects: int


def is_open_sql(status_column: str = "status") -> str:
    """Open = not delivered and not cancelled (case-insensitive); unknown statuses count as open."""
    closed = ", ".join(f"'{status}'" for status in CLOSED_STATUSES)
    return f"lower(trim(coalesce({status_column}, ''))) NOT IN ({closed})"


def open_lines_sql(where: str) -> str:
    return f"SELECT * FROM order_statuses WHERE {is_open_sql()} AND {where}"


def refresh_open_lines_before(
    client: OrderSyncClient, conn: duckdb.DuckDBPyConnection, before_day: dt.date, *, pii_mode: str = "raw"
) -> RefreshResult:
    """Re-read every open line ordered before `before_day` through the bulk PO endpoint and store it.

    Lines without a PO number are looked up by supplier order id instead, one request each.
    """
    open_lines = pl.DataFrame(conn.sql(
        f"SELECT DISTINCT po_number, supplier_order_id FROM ({open_lines_sql('order_day < ?')})", params=[before_day]))
    po_numbers = sorted(open_lines["po_number"].drop_nulls().unique().to_list())
    supplier_orders = sorted(
        open_lines.filter(pl.col("po_number").is_null())["supplier_order_id"].drop_nulls().unique().to_list()
    )
    fetched_at = dt.datetime.now(dt.timezone.utc)
    records = client.get_by_po_numbers(po_numbers) if po_numbers else []
    for supplier_order_id in supplier_orders:
        records.extend(client.get_by_supplier_order(supplier_order_id))
    normalised = normalise_order_statuses(records, fetched_at=fetched_at, pii_mode=pii_mode)
    observed_at = client.last_server_time if records else None
    updated = apply_refreshed_statuses(conn, normalised.rows, normalised.rejects, observed_at=observed_at)
    return RefreshResult(len(po_numbers), len(supplier_orders), len(records), updated, normalised.rejects.height)
