"""`order_status_refresh`: keep `order_statuses` current after a day was first loaded.

Statuses move after their day is loaded (processing today, delivered next week). Each run for day D
re-reads the trailing lookback window through by-date, then every still-open line of older days through
the bulk by-po-numbers endpoint, and logs what it did in `order_status_refreshes`.
"""

import datetime as dt

import dagster as dg
import polars as pl
from pydantic import Field

from ordersync_pipeline.assets.metadata import table_metadata
from ordersync_pipeline.orchestration.partitions import partition_days
from ordersync_pipeline.orchestration.retailer_scope import SINGLE_RETAILER, RetailerScope
from ordersync_pipeline.settings import Settings
from ordersync_pipeline.sync import refresh_open_lines_before, store_days
from ordersync_pipeline.storage.schema import apply_comments
from ordersync_pipeline.storage.warehouse import ArrowStream

REFRESH_LOG_SQL = """
CREATE TABLE IF NOT EXISTS order_status_refreshes (
    as_of_day DATE NOT NULL,
    refreshed_at TIMESTAMPTZ NOT NULL,
    lookback_days INTEGER NOT NULL,
    days_refetched INTEGER NOT NULL,
    lines_refetched INTEGER NOT NULL,
    po_numbers_requested INTEGER NOT NULL,
    supplier_orders_requested INTEGER NOT NULL,
    lines_returned INTEGER NOT NULL,
    lines_updated INTEGER NOT NULL,
    api_requests INTEGER NOT NULL
)
"""
REFRESH_LOG_COMMENTS = {
    "order_status_refreshes": (
        "One row per daily refresh: the lookback days re-read through by-date and the open older lines "
        "re-read through by-po-numbers.",
        {"as_of_day": "Partition day of the run", "refreshed_at": "When the refresh finished (UTC)",
         "lookback_days": "Days before as_of_day re-read through by-date",
         "days_refetched": "Days re-read through by-date", "lines_refetched": "Lines those days returned (re-stored)",
         "po_numbers_requested": "PO numbers of older open lines looked up through by-po-numbers",
         "supplier_orders_requested": "Supplier order ids looked up for open lines without a PO number",
         "lines_returned": "Lines the look-ups returned",
         "lines_updated": "Older open lines overwritten with fresh statuses",
         "api_requests": "HTTP requests the refresh made (retries included)"},
    )
}


class RefreshConfig(dg.Config):
    lookback_days: int = Field(
        default_factory=lambda: Settings.from_env().lookback_days,
        description="Days before the partition day re-read through by-date (default ORDERSYNC_LOOKBACK_DAYS or 14).",
        ge=0,
    )


def _run_started_at(context: dg.AssetExecutionContext) -> dt.datetime | None:
    record = context.instance.get_run_record_by_id(context.run.run_id)
    started = record.start_time if record is not None else None
    return dt.datetime.fromtimestamp(started, dt.timezone.utc) if started else None


def _days_not_loaded_since(conn, days: list[dt.date], since: dt.datetime | None) -> list[dt.date]:
    """The days of `days` not already re-read since `since` (a range run has just loaded its own days)."""
    if since is None or not days:
        return days
    fresh = {d for (d,) in conn.execute(
        "SELECT order_day FROM order_status_loads WHERE fetched_at >= ? AND order_day BETWEEN ? AND ?",
        [since, min(days), max(days)]).fetchall()}
    return [day for day in days if day not in fresh]


def build_order_status_refresh(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("order_status_refresh", deps=("order_statuses",), uses_api=True, kinds={"duckdb"}, group_name="ordersync")
    def order_status_refresh(context: dg.AssetExecutionContext, config: RefreshConfig) -> dg.MaterializeResult:
        """Re-reads the lookback window (by-date) and every open line older than it (by-po-numbers, 100 PO
        numbers per request), so `order_statuses` holds each line's latest status, however old the line."""
        ordersync = scope.ordersync(context)
        warehouse = scope.warehouse(context)
        as_of = partition_days(context)[-1]
        first_partition_day = dt.date.fromisoformat(scope.partitions_def.start.strftime("%Y-%m-%d"))
        window_start = max(as_of - dt.timedelta(days=config.lookback_days), first_partition_day)
        window = [window_start + dt.timedelta(days=i) for i in range((as_of - window_start).days)]
        with ordersync.client() as client, warehouse.connect() as conn:
            lookback = _days_not_loaded_since(conn, window, _run_started_at(context))
            stored = store_days(client, conn, lookback, days_in_flight=ordersync.days_in_flight,
                                days_per_transaction=warehouse.days_per_transaction, pii_mode=warehouse.pii_mode,
                                pii_hash_key=warehouse.pii_hash_key)
            lines_refetched = sum(load.rows.height for load in stored)
            context.log.info(f"re-read {len(lookback)} lookback days ({lines_refetched} lines) through by-date")
            result = refresh_open_lines_before(client, conn, window_start, pii_mode=warehouse.pii_mode,
                                               pii_hash_key=warehouse.pii_hash_key,
                                               days_in_flight=ordersync.days_in_flight,
                                               days_per_transaction=warehouse.days_per_transaction)
            context.log.info(
                f"refreshed open lines ordered before {window_start}: {result.po_numbers_requested} PO numbers, "
                f"{result.lines_returned} lines returned, {result.lines_updated} updated; {result.days_reread} days "
                "re-read through by-date because a look-up showed a line moved or missing"
            )
            log_row = ArrowStream(pl.DataFrame({
                "as_of_day": [as_of], "refreshed_at": [dt.datetime.now(dt.timezone.utc)],
                "lookback_days": [config.lookback_days], "days_refetched": [len(lookback)],
                "lines_refetched": [lines_refetched], "po_numbers_requested": [result.po_numbers_requested],
                "supplier_orders_requested": [result.supplier_orders_requested],
                "lines_returned": [result.lines_returned], "lines_updated": [result.lines_updated],
                "api_requests": [client.counter.requests],
            }))
            conn.execute(REFRESH_LOG_SQL)
            apply_comments(conn, REFRESH_LOG_COMMENTS)
            conn.execute("INSERT INTO order_status_refreshes BY NAME SELECT * FROM log_row")
            metadata = table_metadata(conn, "order_status_refreshes")
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "as_of_day": str(as_of),
                "lookback_days_refetched": len(lookback),
                "lines_refetched": lines_refetched,
                "po_numbers_requested": result.po_numbers_requested,
                "older_open_lines_updated": result.lines_updated,
                "days_reread_for_moved_or_missing_lines": result.days_reread,
                "rejects": result.rejects,
                "api_requests": client.counter.requests,
                "api_retries": client.counter.retries,
            }
        )

    return order_status_refresh


order_status_refresh = build_order_status_refresh(SINGLE_RETAILER)
