"""What a retailer changes in a definition: `RetailerScope`, used by every asset and check builder.

Every asset and check is built by a function of a scope (assets/*.py `build_*`), so a single-retailer
deployment (`RetailerScope(None)`: today's names) and each retailer of ORDERSYNC_RETAILERS
(`RetailerScope("acme")`) are built the same way, with Dagster's public decorators:

                       retailer None              retailer "acme"
  asset key            order_statuses             acme/order_statuses
  pool                 ordersync_duckdb           ordersync_duckdb_acme
  resource keys        ordersync, warehouse       ordersync_acme, warehouse_acme
  group                as the asset says          acme
  tags                 -                          ordersync/retailer: acme
  job names            daily_order_sync           daily_order_sync_acme
  partitions           partitions.daily_partitions  the same days, a definition of its own (below)

Dagster binds resources to parameters by name and one code location has one resource per key, so the
builders declare `required_resource_keys` and take the resources from the context (`scope.warehouse(context)`).
What this module does not know: what an asset does (assets/), nor which jobs exist (jobs.py).
"""

import datetime as dt
import zlib
from dataclasses import dataclass

import dagster as dg

from ordersync_pipeline.orchestration.partitions import daily_partitions
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse

RETAILER_TAG = "ordersync/retailer"
DUCKDB_WRITERS_POOL = "ordersync_duckdb"


def retailer_partitions(retailer: str) -> dg.DailyPartitionsDefinition:
    """The same UTC days as `daily_partitions`, as a definition of the retailer's own.

    Dagster 1.13 has no public way to keep a backfill's runs apart by anything but the partitions: the
    backfill daemon (asset_backfill.py -> build_run_requests_with_backfill_policies in
    dagster/_core/definitions/automation_tick_evaluation_context.py) puts every asset that shares
    (partitions definition, selected partitions, backfill policy) into one run; tags, pools, groups, key
    prefixes and code versions play no part, and partitions definitions compare by value. With one shared
    definition, a backfill of all retailers would be one run writing every retailer in turn.
    So each retailer's definition carries an exclusion of its own that excludes nothing (a moment on the day
    before the first partition, which is no partition's start): the days are identical, the definitions
    differ, and a backfill of several retailers becomes one run per retailer (test_retailers.py checks the
    definitions; test_retailers_deployment.py that a UI backfill of three retailers is three runs).
    """
    before_first = daily_partitions.start - dt.timedelta(days=1)
    marker = before_first + dt.timedelta(milliseconds=1 + zlib.crc32(retailer.encode()) % 86_399_999)
    return dg.DailyPartitionsDefinition(start_date=daily_partitions.start, timezone=daily_partitions.timezone,
                                        exclusions=[marker])


@dataclass(frozen=True)
class RetailerScope:
    """One retailer's names (retailer None: the single-retailer deployment's unprefixed names)."""

    retailer: str | None = None

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.retailer, name] if self.retailer else [name])

    def suffixed(self, name: str) -> str:
        """Pool, resource key and job names: `name`, or `name_<retailer>`."""
        return f"{name}_{self.retailer}" if self.retailer else name

    @property
    def pool(self) -> str:
        return self.suffixed(DUCKDB_WRITERS_POOL)

    @property
    def tags(self) -> dict[str, str]:
        return {RETAILER_TAG: self.retailer} if self.retailer else {}

    @property
    def partitions_def(self) -> dg.DailyPartitionsDefinition:
        return retailer_partitions(self.retailer) if self.retailer else daily_partitions

    def group(self, name: str) -> str:
        return self.retailer or name

    def ordersync(self, context) -> OrderSyncResource:
        return getattr(context.resources, self.suffixed("ordersync"))

    def warehouse(self, context) -> OrderSyncWarehouse:
        return getattr(context.resources, self.suffixed("warehouse"))

    def asset(self, name: str, *, deps: tuple[str, ...] = (), group_name: str, uses_api: bool = False,
              partitioned: bool = True, tags: dict[str, str] | None = None, **kwargs):
        """dg.asset for this retailer: key, deps, group, tags, resources, pool and partitions in scope; every
        asset here writes the DuckDB file, and a range of days runs as one run (single-run backfill policy)."""
        resources = {self.suffixed("warehouse"), *([self.suffixed("ordersync")] if uses_api else [])}
        return dg.asset(key=self.key(name), deps=[self.key(dep) for dep in deps], group_name=self.group(group_name),
                        tags={**(tags or {}), **self.tags}, required_resource_keys=resources, pool=self.pool,
                        partitions_def=self.partitions_def if partitioned else None,
                        backfill_policy=dg.BackfillPolicy.single_run(), **kwargs)

    def asset_check(self, asset: str, *, name: str, description: str):
        """dg.asset_check on this retailer's `asset` that opens the DuckDB file, so it runs in its pool."""
        return dg.asset_check(asset=self.key(asset), name=name, description=description, pool=self.pool,
                              required_resource_keys={self.suffixed("warehouse")})

    def multi_asset_check(self, name: str, *, specs: list[dg.AssetCheckSpec]):
        """dg.multi_asset_check: several checks that open the DuckDB file, run as one step in its pool; each
        check can also run alone (the step then gets only the selected checks)."""
        return dg.multi_asset_check(name=self.suffixed(name), specs=specs, can_subset=True, pool=self.pool,
                                    required_resource_keys={self.suffixed("warehouse")})


SINGLE_RETAILER = RetailerScope(None)
