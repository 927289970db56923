"""The steps a run takes, as plain functions: fetch and normalise a day; refresh open lines.

Client -> normalise -> warehouse, with no Dagster inside, so the benchmark and tests call the same code
the assets do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from ordersync_pipeline.api.client import OrderSyncClient
from ordersync_pipeline.normalise import normalise_order_statuses
from ordersync_pipeline.vocabulary import is_open_sql
from ordersync_pipeline.storage.warehouse import DayLoad, apply_refreshed_statuses, replace_days

def fetch_day_load(client: OrderSyncClient, day: dt.date, *, pii_mode: str = "raw",
                   pii_hash_key: str | None = None,
                   normalising: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()) -> DayLoad:
    """Every record of `day` from by-date, normalised and ready for warehouse.replace_days.

    `normalising` is held while the day's records are decoded and normalised (see fetch_day_loads)."""
    fetched_at = dt.datetime.now(dt.timezone.utc)
    fetch = client.fetch_order_statuses_for_day(day)
    with normalising:
        normalised = normalise_order_statuses(fetch.records, fetched_at=fetched_at, expected_day=day,
                                              pii_mode=pii_mode, pii_hash_key=pii_hash_key)
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


# Days decoded and normalised at the same time by a range's day threads.
DAYS_NORMALISED_AT_ONCE = 2


def fetch_day_loads(
    client: OrderSyncClient, days: list[dt.date], *, days_in_flight: int = 1, days_ready_ahead: int = 0,
    pii_mode: str = "raw", pii_hash_key: str | None = None,
) -> Iterator[DayLoad]:
    """DayLoads in day order: `days_in_flight` days fetched at a time, up to `days_in_flight + days_ready_ahead`
    days beyond those the caller took, so fetching goes on while the caller stores (days_in_flight 1: one day
    at a time, nothing ahead).

    Memory stays bounded by the window, whatever the range: a year's backfill holds a few days' frames and pages at
    a time (with the defaults, up to 15 days beside the 7 being stored; peak RSS 0-9 MB higher, docs/benchmark.md).
    """
    if days_in_flight <= 1:
        yield from (fetch_day_load(client, day, pii_mode=pii_mode, pii_hash_key=pii_hash_key) for day in days)
        return
    pool = ThreadPoolExecutor(days_in_flight, thread_name_prefix="ordersync-day")
    # Days of a range start together and so finish fetching together: decoded and normalised all at once, each
    # holds ~4 MB of objects (a year with 8 days in flight: Python's heap peaked at 33 MB, 23 MB with this, before
    # days were fetched ahead of the transaction being stored).
    # The rest wait as undecoded pages (client.DayFetch); two at a time still keep two cores busy.
    normalising = threading.BoundedSemaphore(DAYS_NORMALISED_AT_ONCE)
    pending: deque[Future[DayLoad]] = deque()
    upcoming = iter(days)

    def submit(day: dt.date) -> None:
        pending.append(pool.submit(fetch_day_load, client, day, pii_mode=pii_mode, pii_hash_key=pii_hash_key,
                                   normalising=normalising))

    try:
        # The pool fetches days_in_flight days at a time; the days submitted beyond them start as soon as a worker
        # has fetched and normalised a day, not when the caller takes one. Refilled only as the caller took days,
        # the window emptied while it stored a transaction: a year in-process had no request in flight for ~20 %
        # of its time (docs/benchmark.md, stop 34).
        for day in itertools.islice(upcoming, days_in_flight + days_ready_ahead):
            submit(day)
        while pending:
            load = pending.popleft().result()
            next_day = next(upcoming, None)
            if next_day is not None:
                submit(next_day)
            yield load
    finally:
        # A failed or abandoned range: queued days never start, and the caller's error is not held up
        # waiting for days already in flight (they finish in the background).
        pool.shutdown(wait=False, cancel_futures=True)


# Re-reading a day can move lines out of yet another day (corrections pile up while days are not re-read),
# so re-reads go on until nothing moves; each round follows a real move, this bound only stops a broken API.
MAX_REREAD_ROUNDS = 31


def store_days(
    client: OrderSyncClient,
    conn: duckdb.DuckDBPyConnection,
    days: list[dt.date],
    *,
    days_in_flight: int,
    days_per_transaction: int,
    pii_mode: str,
    pii_hash_key: str | None = None,
) -> Iterator[DayLoad]:
    """Fetch `days` (a bounded window ahead) and replace them in the warehouse, yielding each once stored.

    Then re-read the days storing them showed changed (a line moved to one of `days` from a day stored
    earlier or outside them): the API's count for such a day changed, and only it can say to what.
    """
    for _ in range(MAX_REREAD_ROUNDS + 1):
        changed: set[dt.date] = set()
        stored: set[dt.date] = set()
        with contextlib.closing(fetch_day_loads(client, days, days_in_flight=days_in_flight,
                                                days_ready_ahead=days_per_transaction, pii_mode=pii_mode,
                                                pii_hash_key=pii_hash_key)) as loads:
            while batch := list(itertools.islice(loads, days_per_transaction)):
                stored.update(load.day for load in batch)
                # A day of the range not stored yet is read anyway, with the move already made.
                changed |= {day for day in replace_days(conn, batch) if day in stored or day not in days}
                yield from batch
        if not changed:
            return
        days = sorted(changed)


@dataclass(frozen=True)
class RefreshResult:
    po_numbers_requested: int
    supplier_orders_requested: int
    lines_returned: int
    lines_updated: int
    rejects: int
    days_reread: int  # loaded days re-read through by-date because a look-up showed them changed


def open_lines_sql(where: str) -> str:
    return f"SELECT * FROM order_statuses WHERE {is_open_sql()} AND {where}"


def refresh_open_lines_before(
    client: OrderSyncClient, conn: duckdb.DuckDBPyConnection, before_day: dt.date, *, pii_mode: str = "raw",
    pii_hash_key: str | None = None, days_in_flight: int = 1, days_per_transaction: int = 7,
) -> RefreshResult:
    """Re-read every open line ordered before `before_day` through the bulk PO endpoint and store it.

    Lines without a PO number are looked up by supplier order id instead, one request each. A look-up that
    no longer returns a line, or returns it under another order day, changes what its day holds: such
    days are re-read through by-date (which moves the line, or retires it to vanished_lines).
    """
    open_lines = pl.DataFrame(conn.sql(
        f"SELECT order_status_id, order_day, po_number, supplier_order_id FROM ({open_lines_sql('order_day < ?')})",
        params=[before_day]))
    po_numbers = sorted(open_lines["po_number"].drop_nulls().unique().to_list())
    supplier_orders = sorted(
        open_lines.filter(pl.col("po_number").is_null())["supplier_order_id"].drop_nulls().unique().to_list()
    )
    fetched_at = dt.datetime.now(dt.timezone.utc)
    records = client.get_by_po_numbers(po_numbers) if po_numbers else []
    for supplier_order_id in supplier_orders:
        records.extend(client.get_by_supplier_order(supplier_order_id))
    normalised = normalise_order_statuses(records, fetched_at=fetched_at, pii_mode=pii_mode, pii_hash_key=pii_hash_key)
    observed_at = client.last_server_time if records else None
    # A line returned but rejected was not missing: it stays as it was, and the rejects table says why.
    # (A line with neither a PO nor a supplier order id was not looked up at all: nothing is known of it.)
    looked_up = open_lines.filter(
        (pl.col("po_number").is_not_null() | pl.col("supplier_order_id").is_not_null())
        & ~pl.col("order_status_id").is_in(normalised.rejects["order_status_id"].drop_nulls().implode()))
    refreshed = apply_refreshed_statuses(conn, normalised.rows, normalised.rejects, observed_at=observed_at,
                                         looked_up=looked_up)
    reread = list(store_days(client, conn, sorted(refreshed.days_to_reread), days_in_flight=days_in_flight,
                             days_per_transaction=days_per_transaction, pii_mode=pii_mode,
                             pii_hash_key=pii_hash_key)) if refreshed.days_to_reread else []
    return RefreshResult(len(po_numbers), len(supplier_orders), len(records), refreshed.updated,
                         normalised.rejects.height, len({load.day for load in reread}))
