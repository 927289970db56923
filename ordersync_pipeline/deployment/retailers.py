"""The asset factory: one retailer's assets, checks, jobs and schedule, built from its name and resources.

`build_retailer(retailer, resources)` builds every asset and check (assets/*.py `build_*`), the jobs and the
schedule (jobs.py) in the retailer's scope (retailer_scope.py: key prefix, pool, resource keys, tags,
partitions), and binds its resources under the scope's keys. The single-retailer deployment is
`build_retailer(None, ...)`, with today's unprefixed names; ORDERSYNC_RETAILERS gives one per retailer
(`acme/order_statuses` in pool `ordersync_duckdb_acme`, with `ordersync_acme`/`warehouse_acme`). Runs are per
retailer, so the daemon and the run launcher spread them like any runs: different retailers' runs write
different files at the same time, while one retailer's writes stay serial.

What this module does not know: what the assets do, or what the settings are (definitions.py passes resources).
"""

from dataclasses import dataclass

import dagster as dg

from ordersync_pipeline.assets.analyst_database import build_analyst_database
from ordersync_pipeline.assets.backlog import build_backlog_checks, build_open_order_backlog, build_stuck_lines
from ordersync_pipeline.assets.marts import build_delivery_lead_times, build_open_orders
from ordersync_pipeline.assets.order_statuses import build_order_status_checks, build_order_statuses
from ordersync_pipeline.assets.refresh import build_order_status_refresh
from ordersync_pipeline.assets.scorecards import build_carrier_scorecard, build_supplier_scorecard
from ordersync_pipeline.orchestration.freshness import freshness_checks
from ordersync_pipeline.deployment.jobs import ScopeJobs, build_jobs, publish_after_backfills_sensor
from ordersync_pipeline.orchestration.retailer_scope import RETAILER_TAG, RetailerScope  # noqa: F401 (RETAILER_TAG: public name)

ASSET_BUILDERS = (build_order_statuses, build_order_status_refresh, build_delivery_lead_times, build_open_orders,
                  build_open_order_backlog, build_stuck_lines, build_supplier_scorecard, build_carrier_scorecard,
                  build_analyst_database)
CHECK_BUILDERS = (build_order_status_checks, build_backlog_checks)
FRESHNESS_WATCHED = ("order_statuses", "analyst_database")


@dataclass(frozen=True)
class RetailerDefinitions:
    """What one retailer adds to the code location."""

    scope: RetailerScope
    assets: list[dg.AssetsDefinition]
    checks: list[dg.AssetChecksDefinition]
    jobs: ScopeJobs
    resources: dict[str, dg.ConfigurableResource]

    @property
    def freshness_watched(self) -> list[dg.AssetKey]:
        return [self.scope.key(name) for name in FRESHNESS_WATCHED]


def build_retailer(retailer: str | None, resources: dict[str, dg.ConfigurableResource]) -> RetailerDefinitions:
    """One retailer's assets, checks, jobs and schedule; `resources` by their unscoped keys (ordersync,
    warehouse), bound under the scope's keys."""
    scope = RetailerScope(retailer)
    assets = [build(scope) for build in ASSET_BUILDERS]
    checks = [check for build in CHECK_BUILDERS for check in build(scope)]
    checks += freshness_checks([scope.key(name) for name in FRESHNESS_WATCHED])
    return RetailerDefinitions(scope, assets, checks, build_jobs(scope),
                               {scope.suffixed(key): resource for key, resource in resources.items()})


def build_code_location(retailers: list[RetailerDefinitions], executor: dg.ExecutorDefinition,
                        shared_resources: dict[str, dg.ConfigurableResource],
                        sensors: list[dg.SensorDefinition], publish_sensor_seconds: int) -> dg.Definitions:
    """Every retailer's definitions, the publish-after-backfills sensor over all of them, and `sensors` and
    `shared_resources` (the alerts) once for all."""
    return dg.Definitions(
        assets=[a for r in retailers for a in r.assets],
        asset_checks=[c for r in retailers for c in r.checks],
        jobs=[job for r in retailers for job in (r.jobs.daily, r.jobs.publish)],
        schedules=[r.jobs.schedule for r in retailers],
        sensors=[publish_after_backfills_sensor([r.jobs for r in retailers], publish_sensor_seconds), *sensors],
        resources={**shared_resources, **{k: v for r in retailers for k, v in r.resources.items()}},
        executor=executor,
    )
