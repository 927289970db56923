"""`defs`: the assets, checks, jobs, schedule and resources of ordersync-pipeline — wiring only."""

import dagster as dg

from ordersync_pipeline.assets.analyst_database import MARTS, analyst_database
from ordersync_pipeline.assets.backlog import backlog_checks
from ordersync_pipeline.assets.order_statuses import order_status_checks, order_statuses
from ordersync_pipeline.assets.refresh import order_status_refresh
from ordersync_pipeline.jobs import (
    daily_order_sync,
    daily_order_sync_schedule,
    publish_after_backfills,
    publish_analyst_database,
)
from ordersync_pipeline.resources import resources_from_env


def build_definitions(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    """The code location with the given resources (tests and the benchmark bind their own)."""
    return dg.Definitions(
        assets=[order_statuses, order_status_refresh, *MARTS, analyst_database],
        asset_checks=[*order_status_checks, *backlog_checks],
        jobs=[daily_order_sync, publish_analyst_database],
        schedules=[daily_order_sync_schedule],
        sensors=[publish_after_backfills],
        resources=resources,
        # Steps of a run share one DuckDB file, which takes one writing process at a time: run them in the
        # run's own process, one after another (also the cheapest executor to start, per the stack notes).
        executor=dg.in_process_executor,
    )


defs = build_definitions(resources_from_env())
