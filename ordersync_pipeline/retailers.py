"""Many retailers in one deployment (ORDERSYNC_RETAILERS): each retailer's own copy of the pipeline.

One OrderSync key sees one retailer. Each retailer named in ORDERSYNC_RETAILERS gets a copy of every asset
and check under its name as key prefix (`acme/order_statuses`), bound to its own resources (its key, its
own working and published DuckDB files), in its own concurrency pool (`ordersync_duckdb_acme`), with its own
jobs and schedule. Runs are per retailer, so the daemon and the run launcher spread them like any runs:
different retailers' runs write different files at the same time, while one retailer's writes stay serial.

The copies are derived from the definitions in assets/ (their functions, specs, policies), never rewritten:
each copy calls the original function with the retailer's resources in place of the shared ones.
"""

import datetime as dt
import inspect
import typing
import zlib
from collections.abc import Callable

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ordersync_pipeline.assets.analyst_database import analyst_database
from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.jobs import (
    DAILY_ASSETS,
    DAILY_DESCRIPTION,
    PUBLISH_DESCRIPTION,
    PUBLISHED_ASSETS,
    RAW_ASSETS,
    daily_order_sync,
    publish_analyst_database,
    publish_request,
)
from ordersync_pipeline.partitions import daily_partitions

RETAILER_TAG = "ordersync/retailer"


def retailer_partitions(retailer: str) -> dg.DailyPartitionsDefinition:
    """The same UTC days as `daily_partitions`, as a definition of the retailer's own.

    Dagster puts every asset of a backfill that shares (partitions definition, partitions, backfill policy)
    into one run, so with one shared definition a backfill of all retailers would be one run writing every
    retailer in turn. Each retailer's definition therefore carries an exclusion of its own that excludes
    nothing (a moment on the day before the first partition, which is no partition's start): the days are
    identical, and a backfill of several retailers becomes one run per retailer.
    """
    before_first = daily_partitions.start - dt.timedelta(days=1)
    marker = before_first + dt.timedelta(milliseconds=1 + zlib.crc32(retailer.encode()) % 86_399_999)
    return dg.DailyPartitionsDefinition(start_date=daily_partitions.start, timezone=daily_partitions.timezone,
                                        exclusions=[marker])


def retailer_pool(pool: str, retailer: str) -> str:
    return f"{pool}_{retailer}"


def retailer_resource_key(key: str, retailer: str) -> str:
    return f"{key}_{retailer}"


def _with_retailer_resources(fn: Callable, retailer: str, context_type: type) -> tuple[Callable, set[str]]:
    """`fn` as a function whose resource parameters come from the retailer's resource keys instead.

    Dagster binds resources to parameters by name, and one code location has one resource per key, so the
    copy takes only the context (and config) and passes `ordersync=context.resources.ordersync_acme`, etc.
    Returns the copy and the resource keys it requires.
    """
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    resources = {name: retailer_resource_key(name, retailer) for name in signature.parameters
                 if isinstance(hints.get(name), type) and issubclass(hints[name], dg.ConfigurableResource)}
    takes_context = "context" in signature.parameters
    kept = [p for name, p in signature.parameters.items() if name not in resources and name != "context"]

    def copy(context, **params):
        bound = {name: getattr(context.resources, key) for name, key in resources.items()}
        return fn(**({"context": context} if takes_context else {}), **params, **bound)

    copy.__name__, copy.__doc__ = fn.__name__, fn.__doc__
    copy.__signature__ = signature.replace(parameters=[
        inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=context_type), *kept])
    return copy, set(resources.values())


def retailer_asset(assets_def: dg.AssetsDefinition, retailer: str,
                   partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """The retailer's copy of a single asset: key and deps prefixed, its resources, pool and partitions."""
    (spec,) = assets_def.specs
    fn, resource_keys = _with_retailer_resources(assets_def.op.compute_fn.decorated_fn, retailer,
                                                 dg.AssetExecutionContext)
    return dg.asset(
        key=spec.key.with_prefix(retailer),
        deps=[dep.asset_key.with_prefix(retailer) for dep in spec.deps],
        description=spec.description,
        metadata=spec.metadata,
        tags={**spec.tags, RETAILER_TAG: retailer},  # kinds travel as dagster/kind/* tags
        group_name=retailer,
        partitions_def=partitions_def if assets_def.partitions_def else None,
        backfill_policy=assets_def.backfill_policy,
        freshness_policy=spec.freshness_policy,
        pool=retailer_pool(assets_def.op.pool, retailer) if assets_def.op.pool else None,
        required_resource_keys=resource_keys,
    )(fn)


def retailer_check(checks_def: dg.AssetChecksDefinition, retailer: str) -> dg.AssetChecksDefinition:
    """The retailer's copy of a single asset check, on the retailer's copy of its asset."""
    (spec,) = checks_def.check_specs
    op = checks_def.node_def
    fn, resource_keys = _with_retailer_resources(op.compute_fn.decorated_fn, retailer, dg.AssetCheckExecutionContext)
    return dg.asset_check(
        asset=spec.asset_key.with_prefix(retailer),
        name=spec.name,
        description=spec.description,
        blocking=spec.blocking,
        additional_deps=[dep.asset_key.with_prefix(retailer) for dep in spec.additional_deps],
        pool=retailer_pool(op.pool, retailer) if op.pool else None,
        required_resource_keys=resource_keys,
    )(fn)


def _keys(assets: list[dg.AssetsDefinition], retailer: str) -> list[dg.AssetKey]:
    return [a.key.with_prefix(retailer) for a in assets]


def retailer_jobs(retailer: str) -> tuple[UnresolvedAssetJobDefinition, ...]:
    """daily_order_sync_<retailer> and publish_analyst_database_<retailer>: today's jobs over the retailer's copies
    (partitioned by the retailer's days, which Dagster infers from the copies they select)."""
    tags = {RETAILER_TAG: retailer}
    daily = dg.define_asset_job(f"{daily_order_sync.name}_{retailer}",
                                selection=dg.AssetSelection.assets(*_keys(DAILY_ASSETS, retailer)),
                                tags=tags, description=f"{retailer}: {DAILY_DESCRIPTION}")
    publish = dg.define_asset_job(
        f"{publish_analyst_database.name}_{retailer}",
        selection=dg.AssetSelection.assets(*_keys(PUBLISHED_ASSETS, retailer))
        | dg.AssetSelection.checks_for_assets(*_keys([order_statuses], retailer)),
        tags=tags, description=f"{retailer}: {PUBLISH_DESCRIPTION}")
    return daily, publish


def publish_after_backfills_sensor(retailers: list[str], publish_jobs: dict[str, UnresolvedAssetJobDefinition],
                                   daily_jobs: dict[str, UnresolvedAssetJobDefinition]) -> dg.SensorDefinition:
    """publish_after_backfills for many retailers: publish the file of each retailer whose raw tables the run wrote."""

    @dg.run_status_sensor(
        name="publish_after_backfills",
        run_status=dg.DagsterRunStatus.SUCCESS,
        request_jobs=list(publish_jobs.values()),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After a successful run that wrote a retailer's order_statuses without publishing (a backfill "
                    "from the UI or the CLI), publish that retailer's analysts' file.",
    )
    def publish_after_backfills(context: dg.RunStatusSensorContext):
        selected = context.dagster_run.asset_selection or frozenset()
        written = [r for r in retailers if any(key.path[0] == r for key in selected)]
        if not written:
            return dg.SkipReason(f"run {context.dagster_run.run_id} wrote no retailer's tables")
        decisions = [publish_request(context, publishing_jobs={daily_jobs[r].name, publish_jobs[r].name},
                                     analyst_key=analyst_database.key.with_prefix(r),
                                     raw_keys=set(_keys(RAW_ASSETS, r)), partitions_def=daily_partitions,
                                     job_name=publish_jobs[r].name)
                     for r in written]
        requests = [d for d in decisions if isinstance(d, dg.RunRequest)]
        return requests or decisions[0]

    return publish_after_backfills


def build_retailer_definitions(assets: list[dg.AssetsDefinition], checks: list[dg.AssetChecksDefinition],
                               resources_by_retailer: dict[str, dict[str, dg.ConfigurableResource]],
                               executor: dg.ExecutorDefinition,
                               shared_resources: dict[str, dg.ConfigurableResource] | None = None,
                               sensors: list[dg.SensorDefinition] = ()) -> dg.Definitions:
    """The code location for several retailers: every asset, check, job and schedule once per retailer;
    `sensors` and `shared_resources` (the alerts) once for all of them."""
    retailers = list(resources_by_retailer)
    copies, check_copies, resources, schedules = [], [], dict(shared_resources or {}), []
    daily_jobs, publish_jobs = {}, {}
    for retailer in retailers:
        partitions_def = retailer_partitions(retailer)
        copies += [retailer_asset(a, retailer, partitions_def) for a in assets]
        check_copies += [retailer_check(c, retailer) for c in checks]
        resources.update({retailer_resource_key(key, retailer): resource
                          for key, resource in resources_by_retailer[retailer].items()})
        daily_jobs[retailer], publish_jobs[retailer] = retailer_jobs(retailer)
        # One schedule per retailer, each ticking at 06:00 UTC: one run per retailer each morning.
        schedules.append(dg.build_schedule_from_partitioned_job(
            daily_jobs[retailer], hour_of_day=6, minute_of_hour=0, default_status=dg.DefaultScheduleStatus.RUNNING,
            tags={RETAILER_TAG: retailer}))
    return dg.Definitions(
        assets=copies,
        asset_checks=check_copies,
        jobs=[*daily_jobs.values(), *publish_jobs.values()],
        schedules=schedules,
        sensors=[publish_after_backfills_sensor(retailers, publish_jobs, daily_jobs), *sensors],
        resources=resources,
        executor=executor,
    )
