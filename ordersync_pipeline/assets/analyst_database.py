"""`analyst_database`: publish the working DuckDB file as the snapshot analysts open.

The pipeline's runs write a private working file; analysts open `ORDERSYNC_DUCKDB_PATH`, which this asset
replaces with a complete copy after every run whose blocking checks passed. Sessions open on the old copy
keep answering from it; new sessions see the new one. No one waits on anyone's lock. With
ORDERSYNC_PUBLISH_URL set, the same file is then uploaded as a new version and made the URL's object
(object_storage.py); an upload that fails fails the run and leaves the store as it was.
"""

import datetime as dt

import dagster as dg
import polars as pl

from ordersync_pipeline.assets.backlog import open_order_backlog, stuck_lines
from ordersync_pipeline.assets.marts import MART, built_as_of, delivery_lead_times, open_orders
from ordersync_pipeline.assets.metadata import markdown_table
from ordersync_pipeline.assets.scorecards import carrier_scorecard, supplier_scorecard
from ordersync_pipeline.storage.object_storage import UploadedSnapshot, UploadError, upload_snapshot
from ordersync_pipeline.orchestration.freshness import freshness_policy
from ordersync_pipeline.orchestration.partitions import partition_days
from ordersync_pipeline.orchestration.resources import OrderSyncWarehouse
from ordersync_pipeline.orchestration.retailer_scope import SINGLE_RETAILER, RetailerScope
from ordersync_pipeline.storage.snapshots import PublishError, publish

# Every mart the analysts' file holds, rebuilt before each publish.
MARTS = [delivery_lead_times, open_orders, open_order_backlog, stuck_lines, supplier_scorecard, carrier_scorecard]


# order_statuses is a direct dependency too, so its blocking checks stop publishing even in a run that
# selected the checks without the asset (publish_analyst_database).
def build_analyst_database(scope: RetailerScope) -> dg.AssetsDefinition:
    @scope.asset("analyst_database", deps=("order_statuses", *(a.key.path[-1] for a in MARTS)), **{**MART, "group_name": "analysts"},
                 freshness_policy=freshness_policy())  # ORDERSYNC_FRESHNESS_HOURS (freshness.py)
    def analyst_database(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """The DuckDB file analysts open (ORDERSYNC_DUCKDB_PATH): a complete, checkpointed copy of the working
        file, swapped in with one atomic rename after every run whose blocking checks passed. Its table
        `published_snapshot` says when and by which run it was published."""
        warehouse = scope.warehouse(context)
        if not warehouse.analyst_database:
            raise dg.Failure("The warehouse resource has no analyst_database path: set ORDERSYNC_DUCKDB_PATH (the file "
                             "analysts open) or OrderSyncWarehouse(analyst_database=...).")
        with warehouse.connect() as conn:
            # What the marts hold: a partition run late keeps newer marts (open_orders, stuck_lines), and so does the row.
            as_of = built_as_of(conn, "open_orders") or partition_days(context)[-1]
            # The row lives in the published copy only (older working files kept a stale one).
            conn.execute("DROP TABLE IF EXISTS published_snapshot")
            try:
                snapshot = publish(conn, warehouse.analyst_database, warehouse.storage_version, run_id=context.run.run_id,
                                   as_of=as_of)
            except PublishError as exc:
                raise dg.Failure(str(exc)) from None
        if snapshot.readwrite_holder:
            context.log.warning(
                f"{snapshot.readwrite_holder} had {snapshot.path} open read-write; it keeps the old snapshot, and what it "
                "writes is not kept. Analysts should open the file read-only.")
        context.log.info(f"Published {snapshot.path} ({snapshot.size_bytes / 1e6:.1f} MB) in {snapshot.seconds:.2f} s")
        uploaded = _upload(context, warehouse, snapshot.path, snapshot.published_at) if warehouse.publish_url else None
        tables = pl.DataFrame({"table": list(snapshot.row_counts), "rows": list(snapshot.row_counts.values())})
        return dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(snapshot.path),
            "published_at": dg.MetadataValue.timestamp(snapshot.published_at),
            "size_mb": round(snapshot.size_bytes / 1e6, 2),
            "seconds_taken": round(snapshot.seconds, 3),
            "storage_version": warehouse.storage_version,
            "as_of_day": str(as_of),
            "order_lines": snapshot.row_counts.get("order_statuses", 0),
            "tables": markdown_table(tables, max_rows=50),
            **(_upload_metadata(uploaded) if uploaded else {}),
        })

    return analyst_database


analyst_database = build_analyst_database(SINGLE_RETAILER)


def _upload(context: dg.AssetExecutionContext, warehouse: OrderSyncWarehouse, path: str,
            published_at: dt.datetime) -> UploadedSnapshot:
    """The local file just published, uploaded as a version and as the URL's object; a failure fails the run
    in one line (the local file is already the new snapshot; the store keeps its last good version)."""
    try:
        uploaded = upload_snapshot(path, warehouse.publish_url, published_at, keep=warehouse.publish_keep,
                                   on_retry=context.log.warning)
    except UploadError as exc:
        raise dg.Failure(description=str(exc)) from None
    if uploaded.cleanup_error:
        context.log.warning(f"Published, but old versions were not deleted: {uploaded.cleanup_error}")
    context.log.info(f"Uploaded {uploaded.version_url} ({uploaded.size_bytes / 1e6:.1f} MB) and made it "
                     f"{uploaded.url} in {uploaded.seconds:.2f} s; {len(uploaded.versions_kept)} versions kept, "
                     f"{len(uploaded.versions_deleted)} deleted")
    return uploaded


def _upload_metadata(uploaded: UploadedSnapshot) -> dict:
    return {
        "published_url": uploaded.url,
        "version_url": uploaded.version_url,
        "uploaded_size_mb": round(uploaded.size_bytes / 1e6, 2),
        "uploaded_at": dg.MetadataValue.timestamp(uploaded.uploaded_at),
        "upload_seconds": round(uploaded.seconds, 3),
        "versions_kept": len(uploaded.versions_kept),
    }
