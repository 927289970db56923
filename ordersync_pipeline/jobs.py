"""What runs when: `daily_order_sync` every morning, and publishing the analysts' file after other runs."""

import dagster as dg

from ordersync_pipeline.assets.analyst_database import MARTS, analyst_database
from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.assets.refresh import order_status_refresh
from ordersync_pipeline.partitions import daily_partitions

# What each job materializes (retailers.py builds each retailer's jobs from the same lists).
DAILY_ASSETS = [order_statuses, order_status_refresh, *MARTS, analyst_database]
PUBLISHED_ASSETS = [*MARTS, analyst_database]
RAW_ASSETS = [order_statuses, order_status_refresh]  # what a backfill writes without publishing
DAILY_DESCRIPTION = ("Load day D, re-read the lookback window and every older open line, rebuild the marts, publish "
                     "the analysts' file.")
PUBLISH_DESCRIPTION = "Check order_statuses, rebuild the marts and publish the analysts' file (run after backfills)."

daily_order_sync = dg.define_asset_job(
    "daily_order_sync",
    selection=dg.AssetSelection.assets(*DAILY_ASSETS),
    description=DAILY_DESCRIPTION,
)

# Each tick (06:00 UTC) runs the partition of the day that just ended.
daily_order_sync_schedule = dg.build_schedule_from_partitioned_job(
    daily_order_sync, hour_of_day=6, minute_of_hour=0, default_status=dg.DefaultScheduleStatus.RUNNING
)

# After a backfill of order_statuses (UI or CLI): re-run the blocking checks, rebuild the marts, publish.
publish_analyst_database = dg.define_asset_job(
    "publish_analyst_database",
    selection=dg.AssetSelection.assets(*PUBLISHED_ASSETS) | dg.AssetSelection.checks_for_assets(order_statuses),
    description=PUBLISH_DESCRIPTION,
)


def publish_request(context: dg.RunStatusSensorContext, *, publishing_jobs: set[str], analyst_key: dg.AssetKey,
                    raw_keys: set[dg.AssetKey], partitions_def: dg.PartitionsDefinition,
                    job_name: str | None = None) -> dg.SkipReason | dg.RunRequest:
    """Whether the run that just succeeded must be followed by a publishing run, and for which day."""
    run = context.dagster_run
    selected = run.asset_selection or frozenset()
    if run.job_name in publishing_jobs or analyst_key in selected:
        return dg.SkipReason(f"run {run.run_id} published the analysts' file itself")
    if not selected & raw_keys:
        return dg.SkipReason(f"run {run.run_id} did not write order_statuses")
    ran_for = run.tags.get("dagster/asset_partition_range_end") or run.tags.get("dagster/partition")
    latest = context.instance.get_latest_materialization_event(analyst_key)
    published_for = latest.asset_materialization.partition if latest and latest.asset_materialization else None
    # Marts are as of a partition day; never publish them as of an older day than the last snapshot's.
    known = [day for day in (ran_for, published_for) if day]
    as_of = max(known) if known else partitions_def.get_last_partition_key()
    return dg.RunRequest(run_key=f"publish-after-{run.run_id}", partition_key=as_of, job_name=job_name,
                         tags={"ordersync/published_after_run": run.run_id})


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    request_job=publish_analyst_database,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a successful run that wrote order_statuses without publishing (a backfill from the UI or "
                "the CLI), publish the analysts' file.",
)
def publish_after_backfills(context: dg.RunStatusSensorContext):
    return publish_request(context, publishing_jobs={daily_order_sync.name, publish_analyst_database.name},
                           analyst_key=analyst_database.key, raw_keys={a.key for a in RAW_ASSETS},
                           partitions_def=daily_partitions)
