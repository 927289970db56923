"""`defs`: the assets, checks, jobs, schedule and resources of ordersync-pipeline — wiring only."""

import dagster as dg

from ordersync_pipeline.assets.backlog import backlog_checks, open_order_backlog, stuck_lines
from ordersync_pipeline.assets.marts import delivery_lead_times, open_orders
from ordersync_pipeline.assets.order_statuses import order_status_checks, order_statuses
from ordersync_pipeline.assets.refresh import order_status_refresh
from ordersync_pipeline.assets.scorecards import carrier_scorecard, supplier_scorecard
from ordersync_pipeline.jobs import daily_order_sync, daily_order_sync_schedule
from ordersync_pipeline.resources import resources_from_env


def build_definitions(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    """The code location with the given resources (tests and the benchmark bind their own)."""
    return dg.Definitions(
        assets=[order_statuses, order_status_refresh, delivery_lead_times, open_orders, open_order_backlog,
                stuck_lines, supplier_scorecard, carrier_scorecard],
        asset_checks=[*order_status_checks, *backlog_checks],
        jobs=[daily_order_sync],
        schedules=[daily_order_sync_schedule],
        resources=resources,
        # Steps of a run share one DuckDB file, which takes one writing process at a time: run them in the
        # run's own process, one after another (also the cheapest executor to start, per the stack notes).
        executor=dg.in_process_executor,
    )


defs = build_definitions(resources_from_env())
