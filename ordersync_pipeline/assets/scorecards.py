"""Who is accountable: `supplier_scorecard` and `carrier_scorecard`, by week of order.

Counts and lead times come from each line's latest status; what only history can tell (was the line
ever backordered, when did the carrier get it) comes from `order_status_history`, whose times are
observations on the API's clock, taken daily: a moment between two observations is stated as a bracket.
"""

import dagster as dg
import duckdb
import polars as pl
from pydantic import Field

from ordersync_pipeline.assets import charts
from ordersync_pipeline.assets.marts import (
    IS_DELIVERED,
    LEAD_TIME_DAYS,
    MART,
    ORDER_WEEK,
    RAW_DEPS,
    rebuild,
    seconds_between,
)
from ordersync_pipeline.assets.metadata import image, markdown_table, table_metadata
from ordersync_pipeline.orchestration.retailer_scope import SINGLE_RETAILER, RetailerScope
from ordersync_pipeline.settings import Settings
from ordersync_pipeline.vocabulary import CLOSED_STATUSES, WITH_CARRIER_STATUSES, is_open_sql, sql_list, status_key_sql

_STATUS = status_key_sql("status")
_WITH_CARRIER = f"{_STATUS} IN ({sql_list(WITH_CARRIER_STATUSES)})"
_BEFORE_CARRIER = f"{_STATUS} NOT IN ({sql_list(WITH_CARRIER_STATUSES + CLOSED_STATUSES)})"
# One row per line from history: when first observed and whether ever seen backordered.
LINE_OBSERVATIONS_SQL = f"""
SELECT order_status_id, min(first_seen_at) AS first_seen_at, bool_or({_STATUS} = 'backordered') AS ever_backordered
FROM order_status_history
GROUP BY order_status_id
"""
# One row per delivered line from history: the two observations around the hand-over to the carrier (last
# seen before it, first seen with the carrier). Only delivered lines' spells that feed one of the two are
# grouped (a semi-join first), not every spell of every line.
HANDOVER_OBSERVATIONS_SQL = f"""
SELECT order_status_id,
       max(last_seen_at) FILTER (WHERE {_BEFORE_CARRIER}) AS last_seen_before_carrier,
       min(first_seen_at) FILTER (WHERE {_WITH_CARRIER}) AS first_seen_with_carrier
FROM order_status_history
WHERE ({_BEFORE_CARRIER} OR {_WITH_CARRIER})
  AND order_status_id IN (SELECT order_status_id FROM order_statuses WHERE {IS_DELIVERED})
GROUP BY order_status_id
"""
# Observed from its order: first seen by the end of the UTC day after its order day, as the daily run
# sees every new line. Earlier statuses of lines first seen later (a backfill) are unknown.
_FULLY_OBSERVED = "o.first_seen_at IS NOT NULL AND make_timestamp(epoch_us(o.first_seen_at)) < s.order_day + 2"


class SupplierScorecardConfig(dg.Config):
    delivery_target_days: int = Field(
        default_factory=lambda: Settings.from_env().delivery_target_days,
        description="Lead time (order to delivery, days) a delivered line should meet "
                    "(default ORDERSYNC_DELIVERY_TARGET_DAYS or 7).",
        ge=1,
    )


SUPPLIER_SCORECARD_SQL = f"""
CREATE OR REPLACE TABLE supplier_scorecard AS
SELECT supplier, order_week,
       count(*) AS lines_ordered,
       count(*) FILTER (WHERE status_key = 'delivered') AS lines_delivered,
       count(*) FILTER (WHERE status_key = 'cancelled') AS lines_cancelled,
       count(*) FILTER (WHERE is_open) AS lines_open,
       count(*) FILTER (WHERE ever_backordered) AS lines_ever_backordered,
       count(*) FILTER (WHERE fully_observed) AS lines_fully_observed,
       lines_cancelled / lines_ordered AS cancellation_rate,
       count(*) FILTER (WHERE fully_observed AND ever_backordered) / nullif(lines_fully_observed, 0) AS backorder_rate,
       quantile_cont(lead_time_days, 0.5) AS p50_lead_time_days,
       quantile_cont(lead_time_days, 0.9) AS p90_lead_time_days,
       count(*) FILTER (WHERE lead_time_days <= $target_days) / nullif(count(lead_time_days), 0)
           AS delivered_within_target_rate,
       $target_days AS delivery_target_days
FROM (
    SELECT s.supplier, {ORDER_WEEK} AS order_week, {_STATUS} AS status_key, {is_open_sql("s.status")} AS is_open,
           CASE WHEN {IS_DELIVERED} THEN {LEAD_TIME_DAYS} END AS lead_time_days,
           coalesce(o.ever_backordered, false) AS ever_backordered, {_FULLY_OBSERVED} AS fully_observed
    FROM order_statuses AS s LEFT JOIN ({LINE_OBSERVATIONS_SQL}) AS o USING (order_status_id)
)
GROUP BY supplier, order_week
"""
SUPPLIER_COMMENTS = {
    "supplier_scorecard": (
        "Each supplier's week of orders (UTC week of order_date), from every stored line with its latest status "
        "and its history. Recent weeks are still moving: open lines may yet be delivered or cancelled. A line "
        "counts as fully observed when the pipeline first saw it by the end of the day after its order day; "
        "lines first seen later (loaded by a backfill) may have been backordered unseen, so backorder_rate uses "
        "fully observed lines only, while lines_ever_backordered counts every line seen backordered.",
        {"supplier": "Supplier / OEM name", "order_week": "Monday of the UTC week of order_date",
         "lines_ordered": "Lines ordered that week", "lines_delivered": "Of them, status delivered now",
         "lines_cancelled": "Of them, status cancelled now", "lines_open": "Of them, neither (unknown statuses included)",
         "lines_ever_backordered": "Lines observed backordered at least once (order_status_history)",
         "lines_fully_observed": "Lines first observed by the end of the day after their order day",
         "cancellation_rate": "lines_cancelled / lines_ordered",
         "backorder_rate": "Share of fully observed lines ever observed backordered; null if none is",
         "p50_lead_time_days": "Median order-to-delivery time of delivered lines (days, from the API's dates)",
         "p90_lead_time_days": "90th percentile of the same",
         "delivered_within_target_rate": "Share of delivered lines delivered within delivery_target_days",
         "delivery_target_days": "ORDERSYNC_DELIVERY_TARGET_DAYS when the table was built"},
    ),
}

CARRIER_SCORECARD_SQL = f"""
CREATE OR REPLACE TABLE carrier_scorecard AS
SELECT carrier, order_week,
       count(*) AS lines_delivered,
       quantile_cont(lead_time_days, 0.5) AS p50_lead_time_days,
       quantile_cont(lead_time_days, 0.9) AS p90_lead_time_days,
       count(transit_days_min) AS lines_transit_bracketed,
       quantile_cont(transit_days_min, 0.5) AS p50_transit_days_min,
       quantile_cont(transit_days_max, 0.5) AS p50_transit_days_max,
       avg(transit_days_max - transit_days_min) AS mean_bracket_width_days,
       sum(transit_days_min) / sum(lead_time_days) FILTER (WHERE transit_days_min IS NOT NULL)
           AS transit_share_of_lead_time_min,
       sum(transit_days_max) / sum(lead_time_days) FILTER (WHERE transit_days_min IS NOT NULL)
           AS transit_share_of_lead_time_max
FROM (
    SELECT s.carrier, {ORDER_WEEK} AS order_week, {LEAD_TIME_DAYS} AS lead_time_days,
           o.last_seen_before_carrier < o.first_seen_with_carrier AND o.first_seen_with_carrier <= s.delivery_date
               AS bracketed,
           CASE WHEN bracketed THEN {seconds_between('s.delivery_date', 'o.first_seen_with_carrier')} / 86400.0 END
               AS transit_days_min,
           CASE WHEN bracketed THEN {seconds_between('s.delivery_date', 'o.last_seen_before_carrier')} / 86400.0 END
               AS transit_days_max
    FROM order_statuses AS s
    LEFT JOIN ({HANDOVER_OBSERVATIONS_SQL}) AS o USING (order_status_id)
    WHERE {IS_DELIVERED}
)
GROUP BY carrier, order_week
"""
CARRIER_COMMENTS = {
    "carrier_scorecard": (
        "Each carrier's delivered lines by UTC week of order. Lead times are exact (the API's order and delivery "
        "dates). Transit time (hand-over to delivery) is bracketed from observations: the hand-over happened "
        "after the last observation showing the line not yet shipped and no later than the first showing it "
        "shipped or in_transit. Observations are daily, so the bracket is about a day wide "
        "(mean_bracket_width_days says exactly); lines seen shipped at their first observation, or never seen "
        "between, have no bracket and are left out of the transit columns.",
        {"carrier": "Carrier name", "order_week": "Monday of the UTC week of order_date",
         "lines_delivered": "Delivered lines (delivery_date not before order_date)",
         "p50_lead_time_days": "Median order-to-delivery time (days)", "p90_lead_time_days": "90th percentile",
         "lines_transit_bracketed": "Delivered lines whose hand-over to the carrier falls between two observations",
         "p50_transit_days_min": "Median transit time, lower bound (from first seen shipped/in_transit)",
         "p50_transit_days_max": "Median transit time, upper bound (from last seen before shipping)",
         "mean_bracket_width_days": "Average width of the bracket (days between the two observations)",
         "transit_share_of_lead_time_min": "The carrier's share of lead time, lower bound (bracketed lines)",
         "transit_share_of_lead_time_max": "The carrier's share of lead time, upper bound (bracketed lines)"},
    ),
}


def build_supplier_scorecard(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("supplier_scorecard", deps=RAW_DEPS, **MART)
    def supplier_scorecard(context: dg.AssetExecutionContext, config: SupplierScorecardConfig) -> dg.MaterializeResult:
        """Table `supplier_scorecard`: per supplier and week of order, lines ordered, delivered, cancelled,
        open and ever backordered, their rates, lead-time percentiles and the share delivered within target."""
        warehouse = scope.warehouse(context)
        with warehouse.connect() as conn:
            rebuild(conn, [(SUPPLIER_SCORECARD_SQL, {"target_days": config.delivery_target_days})], SUPPLIER_COMMENTS)
            worst = worst_suppliers(conn)
            metadata = table_metadata(conn, "supplier_scorecard")
            chart = charts.supplier_scorecard(recent_supplier_figures(conn), config.delivery_target_days)
        return dg.MaterializeResult(metadata={
            **metadata,
            "delivery_target_days": config.delivery_target_days,
            "scorecard_chart": image(chart, "p90 lead time and cancellation rate per supplier, last 4 weeks"),
            "worst_suppliers_last_4_weeks": markdown_table(worst),
        })

    return supplier_scorecard


supplier_scorecard = build_supplier_scorecard(SINGLE_RETAILER)


def build_carrier_scorecard(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("carrier_scorecard", deps=RAW_DEPS, **MART)
    def carrier_scorecard(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Table `carrier_scorecard`: per carrier and week of order, delivered lines, lead-time percentiles
        and the transit time bracketed between daily observations, with the bracket's width."""
        warehouse = scope.warehouse(context)
        with warehouse.connect() as conn:
            rebuild(conn, [(CARRIER_SCORECARD_SQL, {})], CARRIER_COMMENTS)
            carriers = _recent_weeks(conn, "carrier_scorecard", """
                SELECT carrier, sum(lines_delivered) AS delivered, round(max(p90_lead_time_days), 1) AS worst_weekly_p90_days,
                       sum(lines_transit_bracketed) AS bracketed,
                       round(min(p50_transit_days_min), 1) AS best_weekly_p50_transit_min,
                       round(max(p50_transit_days_max), 1) AS worst_weekly_p50_transit_max,
                       round(avg(mean_bracket_width_days), 2) AS bracket_width_days
                FROM carrier_scorecard WHERE order_week >= $since
                GROUP BY carrier ORDER BY worst_weekly_p90_days DESC NULLS LAST
            """)
            metadata = table_metadata(conn, "carrier_scorecard")
        return dg.MaterializeResult(metadata={**metadata, "carriers_last_4_weeks": markdown_table(carriers)})

    return carrier_scorecard


carrier_scorecard = build_carrier_scorecard(SINGLE_RETAILER)


WORST_SUPPLIERS_SQL = """
SELECT supplier, sum(lines_ordered) AS lines,
       round(sum(delivered_within_target_rate * lines_delivered) / nullif(sum(lines_delivered), 0), 3)
           AS within_target,
       round(sum(lines_cancelled) / sum(lines_ordered), 3) AS cancelled,
       round(sum(backorder_rate * lines_fully_observed) / nullif(sum(lines_fully_observed), 0), 3)
           AS backordered,
       round(max(p90_lead_time_days), 1) AS worst_weekly_p90_days
FROM supplier_scorecard WHERE order_week >= $since
GROUP BY supplier ORDER BY within_target NULLS LAST, cancelled DESC
"""


def worst_suppliers(conn: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Suppliers over the last four order weeks, least often within target first (asset page and report)."""
    return _recent_weeks(conn, "supplier_scorecard", WORST_SUPPLIERS_SQL)


# Over the last four order weeks as a whole (weekly p90s cannot be combined, so from the lines themselves).
RECENT_SUPPLIER_FIGURES_SQL = f"""
SELECT supplier, count(*) AS lines_ordered,
       quantile_cont(lead_time_days, 0.9) AS p90_lead_time_days,
       count(*) FILTER (WHERE {_STATUS} = 'cancelled') / count(*) AS cancellation_rate
FROM (SELECT *, {ORDER_WEEK} AS order_week, CASE WHEN {IS_DELIVERED} THEN {LEAD_TIME_DAYS} END AS lead_time_days
      FROM order_statuses)
WHERE order_week >= $since
GROUP BY supplier
"""


def recent_supplier_figures(conn: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """What the supplier chart draws (the asset's page and `ordersync report`): p90 lead time and
    cancellation rate per supplier over the last four order weeks in supplier_scorecard."""
    return _recent_weeks(conn, "supplier_scorecard", RECENT_SUPPLIER_FIGURES_SQL)


def _recent_weeks(conn: duckdb.DuckDBPyConnection, table: str, sql: str):
    """`sql` with $since = the first of the last four order weeks in `table`."""
    since = conn.execute(f"SELECT max(order_week) - INTERVAL 21 DAY FROM {table}").fetchall()[0][0]
    return pl.DataFrame(conn.sql(sql, params={"since": since}))
