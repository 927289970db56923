"""`defs`: the assets, checks, jobs, schedule, sensors and resources of ordersync-pipeline — wiring only.

One retailer (ORDERSYNC_API_KEY) or several (ORDERSYNC_RETAILERS): both built by retailers.build_retailer.
"""

import dagster as dg

from ordersync_pipeline.orchestration.alerts import alerts_from_env, build_alert_sensors
from ordersync_pipeline.assets.backlog import backlog_checks
from ordersync_pipeline.assets.order_statuses import order_status_checks
from ordersync_pipeline.orchestration.freshness import freshness_checks, freshness_sensor
from ordersync_pipeline.deployment.jobs import DAILY_ASSET_NAMES
from ordersync_pipeline.assets.analyst_database import analyst_database
from ordersync_pipeline.assets.backlog import open_order_backlog, stuck_lines
from ordersync_pipeline.assets.marts import delivery_lead_times, open_orders
from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.assets.refresh import order_status_refresh
from ordersync_pipeline.assets.scorecards import carrier_scorecard, supplier_scorecard
from ordersync_pipeline.orchestration.resources import resources_from_env
from ordersync_pipeline.deployment.retailers import FRESHNESS_WATCHED, RetailerDefinitions, build_code_location, build_retailer
from ordersync_pipeline.settings import Settings, retailers_from_env

# The single retailer's module-level assets and checks (tests and the benchmark materialize them directly).
ASSETS = [order_statuses, order_status_refresh, delivery_lead_times, open_orders, open_order_backlog, stuck_lines,
          supplier_scorecard, carrier_scorecard, analyst_database]
assert [a.key.path[-1] for a in ASSETS] == list(DAILY_ASSET_NAMES)  # the daily job materializes every asset
CHECKS = [*order_status_checks, *backlog_checks, *freshness_checks([dg.AssetKey(n) for n in FRESHNESS_WATCHED])]
# Steps of a run share one DuckDB file, which takes one writing process at a time: run them in the
# run's own process, one after another (also the cheapest executor to start, per the stack notes).
EXECUTOR = dg.in_process_executor


def monitoring(watched: list[dg.AssetKey]) -> list[dg.SensorDefinition]:
    """Sensors that watch the whole code location: freshness of `watched`, failed and recovered runs."""
    return [freshness_sensor(watched), *build_alert_sensors()]


def _code_location(retailers: list[RetailerDefinitions]) -> dg.Definitions:
    watched = [key for r in retailers for key in r.freshness_watched]
    return build_code_location(retailers, EXECUTOR, shared_resources={"alerts": alerts_from_env()},
                               sensors=monitoring(watched),
                               publish_sensor_seconds=Settings.from_env().publish_sensor_seconds)


def build_definitions(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    """The code location of one retailer with the given resources (tests and the benchmark bind their own);
    a resource key other than ordersync/warehouse (e.g. alerts) is bound as given."""
    return _code_location([build_retailer(None, resources)])


def build_many_retailers_definitions(resources_by_retailer: dict[str, dict[str, dg.ConfigurableResource]]) -> dg.Definitions:
    """The code location for several retailers, each with its resources (see retailers.py)."""
    return _code_location([build_retailer(r, resources) for r, resources in resources_by_retailer.items()])


def definitions_from_env() -> dg.Definitions:
    retailers = retailers_from_env()
    if not retailers:  # one retailer, ORDERSYNC_API_KEY: exactly as before ORDERSYNC_RETAILERS existed
        return build_definitions(resources_from_env())
    return build_many_retailers_definitions({retailer: resources_from_env(retailer) for retailer in retailers})


defs = definitions_from_env()
