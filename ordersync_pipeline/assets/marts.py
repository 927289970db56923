"""Derived tables analysts query: delivery lead times and open orders, each with a summary.

Each mart is rebuilt from `order_statuses` in one transaction (CREATE OR REPLACE + comments), as of the
run's partition day. The SQL that owns each table is here, beside its asset.
"""

import dagster as dg
import duckdb
import polars as pl

from ordersync_pipeline.assets import charts
from ordersync_pipeline.assets.metadata import image, markdown_table, table_metadata
from ordersync_pipeline.orchestration.partitions import partition_days
from ordersync_pipeline.orchestration.retailer_scope import SINGLE_RETAILER, RetailerScope
from ordersync_pipeline.sync import open_lines_sql
from ordersync_pipeline.vocabulary import (
    AGE_BUCKET_COMMENT,
    CLOSED_STATUSES,
    age_bucket_order_sql,
    age_bucket_sql,
    status_key_sql,
)
from ordersync_pipeline.storage.schema import apply_comments, transaction

# What every mart shares besides what RetailerScope.asset gives every asset (partitions, pool, single-run
# backfills): rebuilt from the raw tables, in the group "marts".
MART = dict(kinds={"duckdb"}, group_name="marts")
RAW_DEPS = ("order_statuses", "order_status_refresh")


def seconds_between(later: str, earlier: str) -> str:
    """SQL for epoch(later - earlier) of two TIMESTAMPTZ in a UTC session, to the same double (whole days
    plus the remaining microseconds, added as epoch() adds an interval's parts), from the stored microseconds:
    ICU's TIMESTAMPTZ subtraction costs about a microsecond a row, seconds over ten million lines."""
    micros = f"(epoch_us({later}) - epoch_us({earlier}))"
    return f"({micros} // 86400000000 * 86400 + {micros} % 86400000000 / 1e6)"


# Shared by every mart that speaks of lead times, so "delivered" and "lead time" mean one thing everywhere.
LEAD_TIME_DAYS = f"{seconds_between('delivery_date', 'order_date')} / 86400.0"
def utc_day(timestamp: str) -> str:
    """SQL for the UTC date of a TIMESTAMPTZ whatever the session's time zone: make_timestamp(epoch_us(x)) is
    timezone('UTC', x) without ICU's per-row cost."""
    return f"CAST(make_timestamp(epoch_us({timestamp})) AS DATE)"


ORDER_WEEK = f"CAST(date_trunc('week', {utc_day('order_date')}) AS DATE)"
IS_DELIVERED = f"{status_key_sql('status')} = 'delivered' AND delivery_date IS NOT NULL AND delivery_date >= order_date"
DELIVERY_LEAD_TIMES_SQL = f"""
CREATE OR REPLACE TABLE delivery_lead_times AS
SELECT
    order_status_id, order_id, po_number, supplier, carrier, order_date, delivery_date,
    {LEAD_TIME_DAYS} AS lead_time_days,
    {ORDER_WEEK} AS order_week
FROM order_statuses
WHERE {IS_DELIVERED}
"""
DELIVERY_LEAD_TIME_SUMMARY_SQL = """
CREATE OR REPLACE TABLE delivery_lead_time_summary AS
SELECT
    supplier, carrier, order_week,
    count(*) AS deliveries,
    avg(lead_time_days) AS mean_days,
    quantile_cont(lead_time_days, 0.5) AS p50_days,
    quantile_cont(lead_time_days, 0.9) AS p90_days,
    quantile_cont(lead_time_days, 0.95) AS p95_days,
    max(lead_time_days) AS max_days
FROM delivery_lead_times
GROUP BY ALL
ORDER BY supplier, carrier, order_week
"""
LEAD_TIME_COMMENTS = {
    "delivery_lead_times": (
        "One row per delivered line: how long from order to delivery. Lines delivered 'before' they were "
        "ordered are left out (the delivery_not_before_order check lists them).",
        {"lead_time_days": "delivery_date - order_date in fractional days",
         "order_week": "Monday of the UTC week of order_date"},
    ),
    "delivery_lead_time_summary": (
        "Lead-time statistics by supplier, carrier and week of order (from delivery_lead_times).",
        {"deliveries": "Delivered lines", "mean_days": "Mean lead time (days)", "p50_days": "Median lead time (days)",
         "p90_days": "90th percentile (days)", "p95_days": "95th percentile (days)", "max_days": "Longest lead time (days)"},
    ),
}

OPEN_ORDERS_SQL = f"""
CREATE OR REPLACE TABLE open_orders AS
SELECT *, {age_bucket_sql()} AS age_bucket
FROM (
    SELECT order_status_id, order_id, po_number, supplier, status, carrier, order_date, order_day,
           $as_of::DATE AS as_of_day,
           date_diff('day', order_day, $as_of::DATE) AS age_days
    FROM ({open_lines_sql("order_day <= $as_of::DATE")})
)
"""
OPEN_ORDER_SUMMARY_SQL = f"""
CREATE OR REPLACE TABLE open_order_summary AS
SELECT supplier, {status_key_sql()} AS status, age_bucket, count(*) AS lines, count(DISTINCT order_id) AS orders,
       min(order_date) AS oldest_order_date, max(age_days) AS oldest_age_days, any_value(as_of_day) AS as_of_day
FROM open_orders
GROUP BY 1, 2, 3
ORDER BY supplier, status, {age_bucket_order_sql()}
"""
OPEN_ORDER_COMMENTS = {
    "open_orders": (
        f"One row per open line (status not in {', '.join(CLOSED_STATUSES)}, case-insensitive) ordered on or "
        "before as_of_day. Statuses the docs never mention are kept and counted as open.",
        {"age_days": "Whole days from order_day to as_of_day", "as_of_day": "Partition day the table was built for",
         "age_bucket": AGE_BUCKET_COMMENT},
    ),
    "open_order_summary": (
        "Open lines by supplier, status and age bucket, with the oldest order of each group.",
        {"status": "Current status, trimmed and lower-case (one spelling per status)", "age_bucket": AGE_BUCKET_COMMENT,
         "lines": "Open lines", "orders": "Distinct orders among them", "oldest_order_date": "Oldest order_date",
         "oldest_age_days": "Age of the oldest line, whole days to as_of_day",
         "as_of_day": "Partition day the table was built for"},
    ),
}


def rebuild(conn: duckdb.DuckDBPyConnection, statements: list[tuple[str, dict]], comments: dict) -> None:
    """Run the CREATE OR REPLACE statements and the comments as one transaction."""
    # Mart rows carry no meaningful order; not preserving it lets DuckDB write millions of rows in parallel.
    conn.execute("SET preserve_insertion_order = false")
    with transaction(conn):
        for sql, params in statements:
            conn.execute(sql, params or None)
        apply_comments(conn, comments)


def lead_times_by_carrier(conn: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """What the lead-time chart draws (the asset's page and `ordersync report`)."""
    return pl.DataFrame(conn.sql("SELECT carrier, lead_time_days FROM delivery_lead_times"))


def build_delivery_lead_times(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("delivery_lead_times", deps=RAW_DEPS, **MART)
    def delivery_lead_times(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Tables `delivery_lead_times` (one row per delivered line) and `delivery_lead_time_summary`
        (count, mean, p50, p90, p95, max by supplier, carrier and week of order)."""
        warehouse = scope.warehouse(context)
        with warehouse.connect() as conn:
            rebuild(conn, [(DELIVERY_LEAD_TIMES_SQL, {}), (DELIVERY_LEAD_TIME_SUMMARY_SQL, {})], LEAD_TIME_COMMENTS)
            by_carrier = lead_times_by_carrier(conn)
            by_supplier = pl.DataFrame(conn.sql("""
                SELECT supplier, count(*) AS deliveries, round(avg(lead_time_days), 2) AS mean_days,
                       round(quantile_cont(lead_time_days, 0.9), 2) AS p90_days
                FROM delivery_lead_times GROUP BY 1 ORDER BY 1
            """))
            metadata = table_metadata(conn, "delivery_lead_times")
        lead_times = by_carrier["lead_time_days"]
        headline = {}
        if lead_times.len():
            headline = {"mean_days": round(float(lead_times.mean()), 2),
                        "p50_days": round(float(lead_times.quantile(0.5, "linear")), 2),
                        "p90_days": round(float(lead_times.quantile(0.9, "linear")), 2)}
        return dg.MaterializeResult(metadata={
            **metadata, **headline,
            "lead_time_distribution": image(charts.lead_time_distribution(by_carrier),
                                            "Lead time by carrier, with p50 and p90"),
            "by_supplier": markdown_table(by_supplier),
        })

    return delivery_lead_times


delivery_lead_times = build_delivery_lead_times(SINGLE_RETAILER)


def built_as_of(conn: duckdb.DuckDBPyConnection, table: str):
    """The as_of_day `table` was last built for, or None if it does not exist yet."""
    exists = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchall()[0][0]
    return conn.execute(f"SELECT max(as_of_day) FROM {table}").fetchall()[0][0] if exists else None


def build_open_orders(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("open_orders", deps=RAW_DEPS, **MART)
    def open_orders(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Tables `open_orders` (one row per line not delivered and not cancelled, with its age in days as of
        the partition day) and `open_order_summary` (by supplier × status × age bucket)."""
        warehouse = scope.warehouse(context)
        as_of = partition_days(context)[-1]
        with warehouse.connect() as conn:
            built_as_of_day = built_as_of(conn, "open_orders")
            if built_as_of_day is not None and built_as_of_day > as_of:
                # Runs can finish out of order (catch-up, backfills): an older partition must not replace a newer table.
                context.log.warning(f"open_orders is already built as of {built_as_of_day}; kept it rather than going "
                                    f"back to {as_of}")
                as_of = built_as_of_day
            else:
                rebuild(conn, [(OPEN_ORDERS_SQL, {"as_of": as_of}), (OPEN_ORDER_SUMMARY_SQL, {})], OPEN_ORDER_COMMENTS)
            summary = pl.DataFrame(conn.sql("SELECT * EXCLUDE (as_of_day) FROM open_order_summary"))
            older_than_week = conn.execute("SELECT count(*) FROM open_orders WHERE age_days > 7").fetchall()[0][0]
            metadata = table_metadata(conn, "open_orders")
        return dg.MaterializeResult(metadata={
            **metadata,
            "as_of_day": str(as_of),
            "open_lines_older_than_7_days": int(older_than_week),
            "summary": markdown_table(summary, max_rows=40),
        })

    return open_orders


open_orders = build_open_orders(SINGLE_RETAILER)
