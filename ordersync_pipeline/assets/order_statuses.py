"""`order_statuses`: one UTC day of order statuses per partition, from by-date into DuckDB, plus its checks."""


import datetime as dt
import time
from typing import NamedTuple

import dagster as dg
import duckdb
import polars as pl

from ordersync_pipeline.assets.metadata import markdown_table, raw_table_column_schema, table_figures
from ordersync_pipeline.orchestration.partitions import partition_days
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.orchestration.retailer_scope import SINGLE_RETAILER, RetailerScope
from ordersync_pipeline.sync import store_days
from ordersync_pipeline.vocabulary import is_known_sql
from ordersync_pipeline.storage.snapshots import is_corruption_error
from ordersync_pipeline.storage.warehouse import DayLoad

# DUCKDB_WRITERS_POOL (retailer_scope.py): every asset and check that opens the DuckDB file runs in it; its
# limit of 1 (dagster.yaml) keeps them serial, because DuckDB allows one writing process at a time.
#
# The connection that stores days runs under the warehouse's store_memory_limit (ORDERSYNC_STORE_MEMORY_LIMIT,
# 32MB by default, never above ORDERSYNC_DUCKDB_MEMORY_LIMIT; settings.py): DuckDB keeps the blocks it writes
# cached up to its memory limit, so a backfill's memory grew with the table it wrote (534 MB at 365 days,
# 567 MB at 730). Storing days needs only the days at hand and their recent history. So do its checks, which
# read the whole table in the same process: the uniqueness check's GROUP BY over 730 days took 173 MB at
# DuckDB's default limit, 38 MB under 32MB (it spills; 1.0 s instead of 0.7 s).
PROGRESS_LOG_SECONDS = 5.0
# While storing, DuckDB checkpoints (writes the WAL's changes into the file) whenever the WAL passes this size.
# At its default of 16MB a year's range checkpointed every ~2 transactions, each rewriting the table's last,
# growing row group and the history rows just updated: storing the year took 12-16 s of CPU, 6.7 s with no
# automatic checkpoint, and its later days cost more than its first. 64MB: ~8 s (replaying the stored year;
# 32MB gave ~9, 128MB ~9.5; docs/benchmark.md). A crash replays the WAL on the next open, so a day is still all
# old or all new; the file is checkpointed when the run ends. Rows committed since the last checkpoint stay in
# DuckDB's memory (~4 MB a 7-day transaction) and past the 32MB store limit go to its temporary files: a smaller
# threshold that keeps them in memory checkpoints more often and costs more (20MB 10.1 CPU-s, 24MB 7.0, 64MB 7.5;
# December 2026), and the cost jumps between 20 and 24MB, where the rows' sizes would move it.
STORE_CHECKPOINT_THRESHOLD = "64MB"


def store_partition_days(context: dg.AssetExecutionContext, ordersync: OrderSyncResource, warehouse: OrderSyncWarehouse
                         ) -> dg.MaterializeResult:
    """Each partition's UTC day fetched from the by-date endpoint (every page) and stored in DuckDB table
    `order_statuses`, replacing exactly that day atomically. Bad records go to
    `order_status_rejects`; each day's API total and counts go to `order_status_loads`."""
    days = partition_days(context)
    per_day = []
    progress = _Progress(context, len(days))
    # One connection for the whole range: reconnecting per day cost more than storing a day. Fetching runs
    # ahead in threads meanwhile; a few whole days go in each transaction, so each day is all old or all new.
    with ordersync.client() as client, warehouse.connect(memory_limit_at_most=warehouse.store_memory_limit) as conn:
        conn.execute(f"SET checkpoint_threshold = '{STORE_CHECKPOINT_THRESHOLD}'")
        stored = store_days(client, conn, days, days_in_flight=ordersync.days_in_flight,
                            days_per_transaction=warehouse.days_per_transaction, pii_mode=warehouse.pii_mode,
                            pii_hash_key=warehouse.pii_hash_key)
        for load in stored:
            per_day.append(
                {"day": str(load.day), "rows": load.rows.height, "api_total": load.api_total,
                 "rejects": load.rejects.height, "pages": load.pages_fetched, "passes": load.paging_passes,
                 "paging_duplicates": load.paging_duplicates, "duplicates": load.duplicates_dropped}
            )
            progress.stored(load)
        requests, retries = client.counter.requests, client.counter.retries
        metadata = table_figures(conn, "order_statuses")
    summary = pl.DataFrame(per_day)
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "days": len(days),
            "rows_written": int(summary["rows"].sum()),
            "api_total": int(summary["api_total"].sum()),
            "rejects": int(summary["rejects"].sum()),
            "duplicates_dropped": int(summary["duplicates"].sum()),
            "paging_duplicates": int(summary["paging_duplicates"].sum()),
            "paging_passes": int(summary["passes"].sum()),
            "pages_fetched": int(summary["pages"].sum()),
            "api_requests": requests,
            "api_retries": retries,
            "per_day": markdown_table(summary, max_rows=31),
        }
    )


def build_order_statuses(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset(
        "order_statuses",
        uses_api=True,
        group_name="ordersync",
        kinds={"duckdb", "polars"},
        # No FreshnessPolicy here (its check updated_within_freshness_window stays): Dagster evaluates a policy at
        # every partition's event, and a year's range run took 46.4 s with it, 39.5 s without.
        # Declared once, not in each materialization: a range run writes one event per partition, each carrying
        # the run's metadata, and the schema was over half of it (8.8 -> 3.9 kB an event; 1.8 MB for a year).
        metadata={"dagster/column_schema": raw_table_column_schema("order_statuses")},
    )
    def order_statuses(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Each partition's UTC day fetched from the by-date endpoint (every page) and stored in DuckDB table
        `order_statuses`, replacing exactly that day atomically. Bad records go to
        `order_status_rejects`; each day's API total and counts go to `order_status_loads`.
        A range of days (CLI --partition-range, UI backfills) runs as one run: one process start, not one per day."""
        return store_partition_days(context, scope.ordersync(context), scope.warehouse(context))

    return order_statuses


order_statuses = build_order_statuses(SINGLE_RETAILER)


class _Progress:
    """Logs stored days every PROGRESS_LOG_SECONDS (and the last one), and every day that needs a warning.

    Not one line per day: each log line is an event Dagster writes to its instance storage (a commit of its
    own, ~10 ms here), so a year's backfill spent seconds on them.
    """

    def __init__(self, context: dg.AssetExecutionContext, days: int):
        self.context, self.days = context, days
        self.done = self.lines = self.api_total = self.rejects = self.pages = 0
        self.first: dt.date | None = None
        self.last_logged = time.monotonic()

    def stored(self, load: DayLoad) -> None:
        self.done += 1
        self.first = self.first or load.day
        self.lines += load.rows.height
        self.api_total += load.api_total
        self.rejects += load.rejects.height
        self.pages += load.pages_fetched
        if self.done == self.days or time.monotonic() - self.last_logged >= PROGRESS_LOG_SECONDS:
            days = str(load.day) if self.first == load.day else f"{self.first}..{load.day}"
            self.context.log.info(
                f"[{self.done}/{self.days} days] {days}: stored {self.lines} lines (API total {self.api_total}, "
                f"{self.rejects} rejected, {self.pages} pages)"
            )
            self.first, self.lines, self.api_total, self.rejects, self.pages = None, 0, 0, 0, 0
            self.last_logged = time.monotonic()
        _warn_about_day(self.context, load)


def _warn_about_day(context: dg.AssetExecutionContext, load: DayLoad) -> None:
    if load.extra_field_names:
        context.log.warning(f"{load.day}: the API sent fields the reference does not list, kept in extra_fields: "
                            f"{', '.join(load.extra_field_names)}")
    if not load.api_total_consistent:
        context.log.warning(f"{load.day}: the API's meta.total ({load.api_total}) never matched the lines it "
                            "returned; stored what it returned, the row-count check will flag it")


class CheckOutcome(NamedTuple):
    """What one check found; build_order_status_checks makes it that check's AssetCheckResult."""

    passed: bool
    severity: dg.AssetCheckSeverity
    description: str
    metadata: dict[str, object]


def _check(passed: bool, severity: dg.AssetCheckSeverity, description: str, **metadata: object) -> CheckOutcome:
    # The ERROR checks are blocking: a failure stops the rest of the run (refresh, marts, analyst_database),
    # so analysts stay on the last good snapshot while the check's page in the UI says why.
    return CheckOutcome(passed, severity, description, metadata)


def order_status_id_is_unique(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    duplicated = pl.DataFrame(conn.sql(
        "SELECT order_status_id, count(*) AS copies FROM order_statuses GROUP BY 1 HAVING count(*) > 1 "
        "ORDER BY copies DESC, order_status_id LIMIT 20"
    ))
    return _check(duplicated.is_empty(), dg.AssetCheckSeverity.ERROR,
                  f"{duplicated.height} order_status_id values appear more than once",
                  duplicated_ids=markdown_table(duplicated))


REQUIRED_COLUMNS = ("order_status_id", "order_id", "order_date", "order_day", "status")


def required_keys_not_null(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    counts = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL) AS {c}" for c in REQUIRED_COLUMNS)
    nulls = pl.DataFrame(conn.sql(f"SELECT {counts} FROM order_statuses")).row(0, named=True)
    offending = {column: count for column, count in nulls.items() if count}
    return _check(not offending, dg.AssetCheckSeverity.ERROR,
                  "no nulls" if not offending else f"null required keys: {offending}",
                  **{f"nulls_{column}": int(count) for column, count in nulls.items()})


# A warning, not blocking: these are the API's own data errors, left out of delivery_lead_times, so the
# marts stay right; blocking would freeze analysts on an old snapshot over a typo only OrderSync can fix.
def delivery_not_before_order(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    bad = pl.DataFrame(conn.sql(
        "SELECT order_status_id, supplier, carrier, order_date, delivery_date FROM order_statuses "
        "WHERE delivery_date < order_date ORDER BY order_date"
    ))
    return _check(bad.is_empty(), dg.AssetCheckSeverity.WARN,
                  f"{bad.height} lines delivered before they were ordered", lines=bad.height,
                  examples=markdown_table(bad, max_rows=10))


def statuses_in_known_vocabulary(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    unknown = pl.DataFrame(conn.sql(
        f"SELECT coalesce(status, '(null)') AS status, count(*) AS lines FROM order_statuses "
        f"WHERE NOT {is_known_sql()} GROUP BY 1 ORDER BY lines DESC"
    ))
    listed = ", ".join(f"{s} ({n})" for s, n in unknown.iter_rows())
    return _check(unknown.is_empty(), dg.AssetCheckSeverity.WARN,
                  "all statuses known" if unknown.is_empty() else f"statuses outside the known vocabulary: {listed} "
                  "(kept, and counted as open lines)", unknown_statuses=markdown_table(unknown))


def row_count_matches_api_total(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    mismatched = pl.DataFrame(conn.sql("""
        SELECT l.order_day, l.api_total, coalesce(s.stored, 0) AS stored, l.rejects
        FROM order_status_loads AS l
        LEFT JOIN (SELECT order_day, count(*) AS stored FROM order_statuses GROUP BY 1) AS s USING (order_day)
        WHERE coalesce(s.stored, 0) + l.rejects <> l.api_total ORDER BY l.order_day
    """))
    days = conn.execute("SELECT count(*) FROM order_status_loads").fetchall()[0][0]
    return _check(mismatched.is_empty(), dg.AssetCheckSeverity.ERROR,
                  f"{mismatched.height} of {days} loaded days differ from the API's total",
                  days_checked=int(days), mismatched_days=markdown_table(mismatched))


def no_rejected_records(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    reasons = pl.DataFrame(conn.sql(
        "SELECT source, regexp_replace(reason, ' .*', '') AS kind, count(*) AS records, min(reason) AS example "
        "FROM order_status_rejects GROUP BY ALL ORDER BY records DESC"
    ))
    total = int(reasons["records"].sum()) if not reasons.is_empty() else 0
    return _check(total == 0, dg.AssetCheckSeverity.WARN,
                  f"{total} records rejected; see table order_status_rejects", rejected=total,
                  reasons=markdown_table(reasons))


# name, whether it blocks, description: the checks on order_statuses, each a function of a connection to the
# working file.
ORDER_STATUS_CHECKS = [
    (order_status_id_is_unique, True, "order_status_id is unique across the table"),
    (required_keys_not_null, True, f"{', '.join(REQUIRED_COLUMNS)} are never null"),
    (delivery_not_before_order, False, "delivery_date is never before order_date (warns; such lines are left out of lead times)"),
    (statuses_in_known_vocabulary, False, "statuses outside the known vocabulary (warns, listing them)"),
    (row_count_matches_api_total, True, "each loaded day accounts for the API's meta.total: lines stored + records rejected"),
    (no_rejected_records, False, "records the API sent that broke the contract (warns)"),
]


def build_order_status_checks(scope: RetailerScope) -> list[dg.AssetChecksDefinition]:
    """The six checks of order_statuses, each its own check in the UI (name, description, blocking, result),
    run as one step on one connection: as six steps, their starts and events cost more than their queries (a
    daily run in process took ~8 % more CPU; docs/development.md), and they would run one after another anyway.
    A check run alone (the UI's "Execute" on one check) runs only that one.

    Each check reports even when another fails or raises: a check that raises is reported failed, with the
    error, at its own severity. So a blocking check that fails or raises fails the step after every selected
    check has reported, and downstream assets do not run; a warning check that raises does not stop them
    (as six steps, it failed the run but the marts and the analysts' file still ran)."""
    asset_key = scope.key("order_statuses")
    specs = [dg.AssetCheckSpec(check.__name__, asset=asset_key, description=description, blocking=blocking)
             for check, blocking, description in ORDER_STATUS_CHECKS]

    @scope.multi_asset_check("order_statuses_checks", specs=specs)
    def order_statuses_checks(context: dg.AssetCheckExecutionContext):
        selected = [(check, blocking) for check, blocking, _ in ORDER_STATUS_CHECKS
                    if dg.AssetCheckKey(asset_key, check.__name__) in context.selected_asset_check_keys]
        # Under the store memory limit as well, because every check reads the whole table.
        warehouse = scope.warehouse(context)
        with warehouse.connect(memory_limit_at_most=warehouse.store_memory_limit) as conn:
            for check, blocking in selected:
                try:
                    outcome = check(conn)
                except Exception as exc:
                    if isinstance(exc, duckdb.Error) and is_corruption_error(exc):
                        raise  # connect() turns it into the error that says what to do
                    context.log.exception(f"check {check.__name__} raised")
                    first_line = next(iter(str(exc).splitlines()), "")
                    severity = dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN
                    outcome = _check(False, severity, f"the check raised {type(exc).__name__}: {first_line[:300]} "
                                     "(traceback in this run's log; rerun with publish_analyst_database once fixed)")
                yield dg.AssetCheckResult(asset_key=asset_key, check_name=check.__name__, passed=outcome.passed,
                                          severity=outcome.severity, description=outcome.description,
                                          metadata=outcome.metadata)

    return [order_statuses_checks]


order_status_checks = build_order_status_checks(SINGLE_RETAILER)
