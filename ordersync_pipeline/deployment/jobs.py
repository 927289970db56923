"""What runs when, for one retailer's scope: `daily_order_sync` every morning, and publishing the analysts'
file after other runs (a backfill from the UI or the CLI).

`build_jobs(scope)` names the jobs as the scope says (`daily_order_sync`, `daily_order_sync_acme`). What this
module does not know: how assets are built (assets/, retailer_scope.py) or how a code location is put
together (retailers.py, definitions.py).
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from ordersync_pipeline.orchestration.retailer_scope import RetailerScope

# What each job materializes, by asset name (each retailer's keys are these under its prefix).
RAW_ASSET_NAMES = ("order_statuses", "order_status_refresh")  # what a backfill writes without publishing
MART_NAMES = ("delivery_lead_times", "open_orders", "open_order_backlog", "stuck_lines", "supplier_scorecard",
              "carrier_scorecard")
PUBLISHED_ASSET_NAMES = (*MART_NAMES, "analyst_database")
DAILY_ASSET_NAMES = (*RAW_ASSET_NAMES, *PUBLISHED_ASSET_NAMES)
DAILY_DESCRIPTION = ("Load day D, re-read the lookback window and every older open line, rebuild the marts, publish "
                     "the analysts' file.")
PUBLISH_DESCRIPTION = "Check order_statuses, rebuild the marts and publish the analysts' file (run after backfills)."


@dataclass(frozen=True)
class ScopeJobs:
    """One scope's jobs and schedule."""

    scope: RetailerScope
    daily: Any  # what dg.define_asset_job returns (its class is not part of Dagster's public API)
    publish: Any
    schedule: dg.ScheduleDefinition


def build_jobs(scope: RetailerScope) -> ScopeJobs:
    keys = [scope.key(name) for name in DAILY_ASSET_NAMES]
    prefix = f"{scope.retailer}: " if scope.retailer else ""
    daily = dg.define_asset_job(scope.suffixed("daily_order_sync"), selection=dg.AssetSelection.assets(*keys),
                                tags=scope.tags or None, description=prefix + DAILY_DESCRIPTION)
    # After a backfill of order_statuses (UI or CLI): re-run its checks, rebuild the marts, publish.
    publish = dg.define_asset_job(
        scope.suffixed("publish_analyst_database"),
        selection=dg.AssetSelection.assets(*(scope.key(name) for name in PUBLISHED_ASSET_NAMES))
        | dg.AssetSelection.checks_for_assets(scope.key("order_statuses")),
        tags=scope.tags or None, description=prefix + PUBLISH_DESCRIPTION)
    # Each tick (06:00 UTC) runs the partition of the day that just ended; one schedule, so one run, per retailer.
    schedule = dg.build_schedule_from_partitioned_job(
        daily, hour_of_day=6, minute_of_hour=0, default_status=dg.DefaultScheduleStatus.RUNNING,
        tags=scope.tags or None)
    return ScopeJobs(scope, daily, publish, schedule)


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


def publish_after_backfills_sensor(all_jobs: list[ScopeJobs], interval_seconds: int) -> dg.SensorDefinition:
    """One sensor for the code location: after a run that wrote a scope's raw tables without publishing,
    publish that scope's analysts' file (each retailer's whose tables the run wrote). It looks every
    `interval_seconds` (ORDERSYNC_PUBLISH_SENSOR_SECONDS)."""
    many = any(jobs.scope.retailer for jobs in all_jobs)

    @dg.run_status_sensor(
        name="publish_after_backfills",
        run_status=dg.DagsterRunStatus.SUCCESS,
        request_jobs=[jobs.publish for jobs in all_jobs],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_seconds,
        description="After a successful run that wrote order_statuses without publishing (a backfill from the UI or "
                    "the CLI), publish the analysts' file" + (" of each retailer it wrote." if many else "."),
    )
    def publish_after_backfills(context: dg.RunStatusSensorContext):
        selected = context.dagster_run.asset_selection or frozenset()
        written = [jobs for jobs in all_jobs
                   if not jobs.scope.retailer or any(key.path[0] == jobs.scope.retailer for key in selected)]
        if not written:
            return dg.SkipReason(f"run {context.dagster_run.run_id} wrote no retailer's tables")
        decisions = [publish_request(context, publishing_jobs={jobs.daily.name, jobs.publish.name},
                                     analyst_key=jobs.scope.key("analyst_database"),
                                     raw_keys={jobs.scope.key(name) for name in RAW_ASSET_NAMES},
                                     partitions_def=jobs.scope.partitions_def,
                                     job_name=jobs.publish.name if many else None)
                     for jobs in written]
        requests = [d for d in decisions if isinstance(d, dg.RunRequest)]
        return requests or decisions[0]

    return publish_after_backfills

