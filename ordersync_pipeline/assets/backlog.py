"""The backlog over time and the lines stuck in it: `open_order_backlog` (accumulating, one day per
partition) and `stuck_lines` (the current work list), with a check that warns while any line is stuck.

"When" is the API's clock (the `Date` header of the responses, recorded as `observed_at` in history): a
run for day D that observed the API during the UTC day after D (the 06:00 schedule does) took D's
picture. A later run for D cannot see D any more, so it keeps what was written instead of rewriting it.
"""

import datetime as dt

import dagster as dg
import duckdb
import polars as pl
from pydantic import Field

from ordersync_pipeline.assets import charts
from ordersync_pipeline.assets.marts import MART, RAW_DEPS, built_as_of, rebuild, utc_day
from ordersync_pipeline.assets.metadata import image, markdown_table, table_metadata
from ordersync_pipeline.orchestration.partitions import partition_days
from ordersync_pipeline.orchestration.resources import OrderSyncWarehouse
from ordersync_pipeline.orchestration.retailer_scope import SINGLE_RETAILER, RetailerScope
from ordersync_pipeline.settings import Settings
from ordersync_pipeline.sync import open_lines_sql
from ordersync_pipeline.vocabulary import (
    AGE_BUCKET_COMMENT,
    AGE_BUCKET_LABELS,
    CLOSED_STATUSES,
    age_bucket_sql,
    is_open_sql,
    status_key_sql,
)

OPEN_ORDER_BACKLOG_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS open_order_backlog (
    as_of_day DATE NOT NULL,
    supplier VARCHAR,
    status VARCHAR,
    age_bucket VARCHAR NOT NULL,
    open_lines BIGINT NOT NULL,
    open_orders BIGINT NOT NULL,
    oldest_order_date TIMESTAMPTZ NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL
)
"""
# $observed_at: the latest observation, which the statuses in order_statuses are as of.
OPEN_ORDER_BACKLOG_DAY_SQL = f"""
INSERT INTO open_order_backlog
SELECT $as_of::DATE, supplier, status, age_bucket, count(*), count(DISTINCT order_id), min(order_date),
       $observed_at::TIMESTAMPTZ
FROM (
    SELECT supplier, {status_key_sql()} AS status, order_id, order_date, {age_bucket_sql()} AS age_bucket
    FROM (SELECT *, date_diff('day', order_day, $as_of::DATE) AS age_days
          FROM ({open_lines_sql("order_day <= $as_of::DATE")}))
)
GROUP BY supplier, status, age_bucket
"""
BACKLOG_COMMENTS = {
    "open_order_backlog": (
        "The open-order backlog day by day: for each as_of_day, open lines (status not in "
        f"{', '.join(CLOSED_STATUSES)}) ordered on or before it, by supplier, status and age bucket, as the run "
        "for that day observed them after its refresh. A day is written only by a run that observed the API "
        "during the UTC day after it (the 06:00 schedule does); a later re-run keeps what was written rather than "
        "mixing in later statuses. Days the pipeline did not observe then (before it first ran, or while it was "
        "down) have no rows: unknown, not zero. Only lines the pipeline had loaded by then are counted.",
        {"as_of_day": "The partition day the figures describe (the morning after it, on the API's clock)",
         "supplier": "Supplier / OEM name",
         "status": "Status as observed by the run for as_of_day (trimmed, lower-case: one spelling per status)",
         "age_bucket": AGE_BUCKET_COMMENT + " to as_of_day",
         "open_lines": "Open lines in the group",
         "open_orders": "Distinct order_id among them",
         "oldest_order_date": "Oldest order_date in the group",
         "observed_at": "API clock of the observation the statuses are as of (the run's latest fetch)"},
    ),
}


class StuckLinesConfig(dg.Config):
    stuck_after_days: int = Field(
        default_factory=lambda: Settings.from_env().stuck_after_days,
        description="Days an open line must have been observed in one status to be stuck "
                    "(default ORDERSYNC_STUCK_AFTER_DAYS or 5).",
        ge=1,
    )


# Whole UTC calendar days from the first observation in the status to the observation the table is as of:
# daily runs start a few seconds earlier or later each morning, and counting seconds (N * 86400) made a line
# stuck a day late whenever today's run started earlier than the one that first saw the status.
_DAYS_IN_STATUS = f"date_diff('day', {utc_day('h.first_seen_at')}, {utc_day('$observed_at::TIMESTAMPTZ')})"
STUCK_LINES_SQL = f"""
CREATE OR REPLACE TABLE stuck_lines AS
SELECT s.order_status_id, s.po_number, s.supplier, s.status,
       h.first_seen_at AS status_since, h.last_seen_at,
       CAST({_DAYS_IN_STATUS} AS INTEGER) AS days_in_status,
       s.order_date, $as_of::DATE AS as_of_day, $observed_at::TIMESTAMPTZ AS observed_at
FROM order_statuses AS s
JOIN order_status_history AS h ON h.order_status_id = s.order_status_id AND h.is_latest
WHERE {is_open_sql("s.status")} AND s.order_day <= $as_of::DATE
  AND {_DAYS_IN_STATUS} >= $stuck_after_days
"""


def stuck_lines_comments(stuck_after_days: int) -> dict:
    return {
        "stuck_lines": (
            f"Open lines in one status for at least {stuck_after_days} whole days (ORDERSYNC_STUCK_AFTER_DAYS): "
            "the list to chase. Counted in UTC calendar days from the first observation showing the status to the "
            "latest observation (observed_at), on the API's clock; the change itself may have happened up to one "
            "observation interval (a day) before status_since. Lines the API no longer returns are not here "
            "(see vanished_lines).",
            {"order_status_id": "The line's own id", "po_number": "Retailer PO number",
             "supplier": "Supplier / OEM name", "status": "Current status as sent (unchanged since status_since, "
             "whatever its spelling)",
             "status_since": "First observation showing the current status (API clock)",
             "last_seen_at": "Latest observation still showing it",
             "days_in_status": "Whole UTC days from status_since to observed_at",
             "order_date": "When the line was ordered (UTC)",
             "as_of_day": "Partition day the table was built for",
             "observed_at": "The latest observation of the API (its clock) the table is as of"},
        ),
    }


def latest_observation(conn: duckdb.DuckDBPyConnection) -> dt.datetime | None:
    """The latest time the pipeline observed the API (history's clock): order_statuses is as of then."""
    return conn.execute("SELECT max(last_seen_at) FROM order_status_history").fetchall()[0][0]


def day_observed_on_time(observed_at: dt.datetime | None) -> dt.date | None:
    """The day whose backlog an observation at `observed_at` may write: the UTC day before it."""
    if observed_at is None:
        return None
    return observed_at.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)


def build_open_order_backlog(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("open_order_backlog", deps=RAW_DEPS, **MART)
    def open_order_backlog(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Table `open_order_backlog`: open lines and orders by supplier × status × age bucket for each day,
        kept from day to day, so `GROUP BY as_of_day` is the backlog trend."""
        warehouse = scope.warehouse(context)
        days = partition_days(context)
        with warehouse.connect() as conn:
            observed_at = latest_observation(conn)
            on_time = day_observed_on_time(observed_at)
            if on_time in days:
                rebuild(conn, [(OPEN_ORDER_BACKLOG_TABLE_SQL, {}),
                               ("DELETE FROM open_order_backlog WHERE as_of_day = $as_of", {"as_of": on_time}),
                               (OPEN_ORDER_BACKLOG_DAY_SQL, {"as_of": on_time, "observed_at": observed_at})],
                        BACKLOG_COMMENTS)
            else:
                rebuild(conn, [(OPEN_ORDER_BACKLOG_TABLE_SQL, {})], BACKLOG_COMMENTS)
            not_written = [day for day in days if day != on_time]
            if not_written:
                context.log.info(
                    f"open_order_backlog: kept {_span(not_written)} as it was (rows or none): the latest observation "
                    f"({observed_at}) is not from the day after, so today's statuses would misstate it")
            metadata = {**table_metadata(conn, "open_order_backlog"), **_backlog_headline(conn)}
            chart = backlog_chart(backlog_by_day(conn))
        return dg.MaterializeResult(metadata={
            **metadata,
            "backlog_chart": image(chart, "Open lines by day, stacked by age"),
            "day_written": str(on_time) if on_time in days else "none",
            "days_kept": len(not_written),
            "observed_at": str(observed_at),
        })

    return open_order_backlog


open_order_backlog = build_open_order_backlog(SINGLE_RETAILER)


def backlog_by_day(conn: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """What the backlog chart draws (the asset's page and `ordersync report`): open lines per day and age bucket."""
    return pl.DataFrame(conn.sql("SELECT as_of_day, age_bucket, sum(open_lines) AS open_lines "
                                 "FROM open_order_backlog GROUP BY ALL"))


def backlog_chart(by_day: pl.DataFrame, fmt: charts.Format = "png") -> bytes:
    """The backlog chart, age buckets youngest first."""
    return charts.backlog_over_time(by_day, list(AGE_BUCKET_LABELS), fmt)


def _span(days: list[dt.date]) -> str:
    return str(days[0]) if len(days) == 1 else f"{len(days)} days {days[0]} .. {days[-1]}"


def _backlog_headline(conn: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """Backlog on the latest day against 7 days earlier, overall and per supplier."""
    latest = conn.execute("SELECT max(as_of_day) FROM open_order_backlog").fetchall()[0][0]
    if latest is None:
        return {"latest_day": "none observed yet"}
    week_before = latest - dt.timedelta(days=7)
    by_supplier = pl.DataFrame(conn.sql("""
        SELECT supplier,
               sum(open_lines) FILTER (WHERE as_of_day = $latest) AS open_lines,
               sum(open_lines) FILTER (WHERE as_of_day = $week_before) AS open_lines_7_days_before,
               sum(open_lines) FILTER (WHERE as_of_day = $latest AND age_bucket NOT IN ('0-2', '3-7')) AS older_than_7_days
        FROM open_order_backlog WHERE as_of_day IN ($latest, $week_before)
        GROUP BY supplier ORDER BY open_lines DESC NULLS LAST
    """, params={"latest": latest, "week_before": week_before}))
    trend = pl.DataFrame(conn.sql("SELECT as_of_day, sum(open_lines) AS open_lines, sum(open_orders) AS open_orders "
                                  "FROM open_order_backlog GROUP BY 1 ORDER BY 1 DESC LIMIT 14"))
    today = int(by_supplier["open_lines"].sum() or 0)
    before = by_supplier["open_lines_7_days_before"]
    headline: dict[str, object] = {"latest_day": str(latest), "open_lines": today}
    if before.null_count() < before.len():  # that day was observed
        headline |= {"open_lines_7_days_before": int(before.sum()), "change_in_7_days": today - int(before.sum())}
    else:
        headline["open_lines_7_days_before"] = f"{week_before} not observed"
    return headline | {"by_supplier": markdown_table(by_supplier), "last_14_days": markdown_table(trend)}


def build_stuck_lines(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("stuck_lines", deps=RAW_DEPS, **MART)
    def stuck_lines(context: dg.AssetExecutionContext, config: StuckLinesConfig) -> dg.MaterializeResult:
        """Table `stuck_lines`: open lines observed in one status for at least `stuck_after_days`, with when
        the status was first seen: the list an operations person works through."""
        warehouse = scope.warehouse(context)
        as_of = partition_days(context)[-1]
        with warehouse.connect() as conn:
            built = built_as_of(conn, "stuck_lines")
            if built is not None and built > as_of:
                # As for open_orders: an older partition run late must not replace a newer list.
                context.log.warning(f"stuck_lines is already built as of {built}; kept it rather than going back to {as_of}")
                as_of = built
            else:
                rebuild(conn, [(STUCK_LINES_SQL, {"as_of": as_of, "stuck_after_days": config.stuck_after_days,
                                                  "observed_at": latest_observation(conn)})],
                        stuck_lines_comments(config.stuck_after_days))
            by_supplier = pl.DataFrame(conn.sql(
                "SELECT supplier, status, count(*) AS lines, max(days_in_status) AS longest_days FROM stuck_lines "
                "GROUP BY ALL ORDER BY lines DESC"))
            metadata = table_metadata(conn, "stuck_lines")
        return dg.MaterializeResult(metadata={
            **metadata,
            "as_of_day": str(as_of),
            "stuck_after_days": config.stuck_after_days,
            "stuck_lines": int(by_supplier["lines"].sum() or 0),
            "by_supplier_and_status": markdown_table(by_supplier),
        })

    return stuck_lines


stuck_lines = build_stuck_lines(SINGLE_RETAILER)


def longest_stuck(conn: duckdb.DuckDBPyConnection, limit: int) -> pl.DataFrame:
    """The stuck lines to chase first: longest in one status (the check's description and the report)."""
    return pl.DataFrame(conn.sql(
        "SELECT order_status_id, po_number, supplier, status, days_in_status, status_since FROM stuck_lines "
        "ORDER BY days_in_status DESC, status_since, order_status_id LIMIT $limit", params={"limit": limit}))


def stuck_lines_check(warehouse: OrderSyncWarehouse) -> dg.AssetCheckResult:
    """no_stuck_lines: open lines stuck in one status (warns, worst first)."""
    with warehouse.connect() as conn:
        count = conn.execute("SELECT count(*) FROM stuck_lines").fetchall()[0][0]
        worst = longest_stuck(conn, limit=10)
    examples = ", ".join(f"{po} ({supplier}, {status} {days} d)" for _, po, supplier, status, days, _ in worst.head(3).iter_rows())
    return dg.AssetCheckResult(
        passed=count == 0, severity=dg.AssetCheckSeverity.WARN,
        description="no stuck lines" if count == 0 else f"{count} lines stuck; worst: {examples}",
        metadata={"stuck_lines": int(count), "worst": markdown_table(worst)},
    )


def build_backlog_checks(scope: RetailerScope) -> list[dg.AssetChecksDefinition]:
    @scope.asset_check("stuck_lines", name="no_stuck_lines", description="open lines stuck in one status (warns, worst first)")
    def no_stuck_lines(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return stuck_lines_check(scope.warehouse(context))

    return [no_stuck_lines]


backlog_checks = build_backlog_checks(SINGLE_RETAILER)
