"""Dagster's floor for `ordersync bench`: what a range run costs when our code does nothing.

An asset named like ours over the same daily partitions, with the same single-run backfill policy, pool and
six blocking checks run as one step, that fetches and stores nothing and returns one MaterializeResult for the
range (Dagster then records one event per partition, as it does for order_statuses). Run by the same command as the
pipeline (`dagster asset materialize -m ordersync_pipeline.bench.floor --select order_statuses
--partition-range A...B`) on the same instance kind, its wall and CPU are what Dagster alone costs; the
pipeline's minus these is our own work. Knows no API, no DuckDB.
"""

import dagster as dg

from ordersync_pipeline.orchestration.retailer_scope import DUCKDB_WRITERS_POOL
from ordersync_pipeline.orchestration.partitions import daily_partitions, partition_days


@dg.asset(partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), pool=DUCKDB_WRITERS_POOL,
          group_name="ordersync")
def order_statuses(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """No work: the run's days, counted."""
    return dg.MaterializeResult(metadata={"days": len(partition_days(context))})


# As many checks as order_statuses has (assets/order_statuses.py), run as one step as there.
CHECK_NAMES = ("order_status_id_is_unique", "required_keys_not_null", "delivery_not_before_order",
               "statuses_in_known_vocabulary", "row_count_matches_api_total", "no_rejected_records")


@dg.multi_asset_check(name="order_statuses_checks", can_subset=True, pool=DUCKDB_WRITERS_POOL,
                      specs=[dg.AssetCheckSpec(name, asset=order_statuses, blocking=True) for name in CHECK_NAMES])
def passing_checks(context: dg.AssetCheckExecutionContext):
    for key in context.selected_asset_check_keys:
        yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=True)


defs = dg.Definitions(assets=[order_statuses], asset_checks=[passing_checks], executor=dg.in_process_executor)
