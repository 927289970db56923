"""`defs`: the assets, checks, jobs, schedule, sensors and resources of ordersync-pipeline — wiring only."""

import dagster as dg

from ordersync_pipeline.alerts import alerts_from_env, build_alert_sensors
from ordersync_pipeline.assets.analyst_database import analyst_database
from ordersync_pipeline.assets.backlog import backlog_checks
from ordersync_pipeline.assets.order_statuses import order_status_checks, order_statuses
from ordersync_pipeline.freshness import freshness_checks, freshness_sensor
from ordersync_pipeline.jobs import (
    DAILY_ASSETS,
    daily_order_sync,
    daily_order_sync_schedule,
    publish_after_backfills,
    publish_analyst_database,
)
from ordersync_pipeline.resources import resources_from_env, retailers_from_env
from ordersync_pipeline.retailers import build_retailer_definitions

ASSETS = DAILY_ASSETS  # the daily job materializes every asset of the code location
FRESHNESS_WATCHED = [order_statuses, analyst_database]
CHECKS = [*order_status_checks, *backlog_checks, *freshness_checks(FRESHNESS_WATCHED)]
# Steps of a run share one DuckDB file, which takes one writing process at a time: run them in the
# run's own process, one after another (also the cheapest executor to start, per the stack notes).
EXECUTOR = dg.in_process_executor


def monitoring(watched: list[dg.AssetKey]) -> list[dg.SensorDefinition]:
    """Sensors that watch the whole code location: freshness of `watched`, failed and recovered runs."""
    return [freshness_sensor(watched), *build_alert_sensors()]


def build_definitions(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    """The code location with the given resources (tests and the benchmark bind their own)."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[daily_order_sync, publish_analyst_database],
        schedules=[daily_order_sync_schedule],
        sensors=[publish_after_backfills, *monitoring([a.key for a in FRESHNESS_WATCHED])],
        resources={"alerts": alerts_from_env(), **resources},
        executor=EXECUTOR,
    )


def build_many_retailers_definitions(resources_by_retailer: dict[str, dict[str, dg.ConfigurableResource]]) -> dg.Definitions:
    """The code location for several retailers, each with its resources (see retailers.py)."""
    watched = [a.key.with_prefix(r) for r in resources_by_retailer for a in FRESHNESS_WATCHED]
    return build_retailer_definitions(ASSETS, CHECKS, resources_by_retailer, EXECUTOR,
                                      shared_resources={"alerts": alerts_from_env()}, sensors=monitoring(watched))


def definitions_from_env() -> dg.Definitions:
    retailers = retailers_from_env()
    if not retailers:  # one retailer, ORDERSYNC_API_KEY: exactly as before ORDERSYNC_RETAILERS existed
        return build_definitions(resources_from_env())
    return build_many_retailers_definitions({retailer: resources_from_env(retailer) for retailer in retailers})


defs = definitions_from_env()
