"""Dagster resources: the OrderSync API client and the DuckDB warehouse, built from a `Settings`.

What lives here: the resource classes, and how the warehouse opens its working file (waiting on another
process's lock, explaining DuckDB's errors, adopting a single-file install). What does not: reading and
checking the ORDERSYNC_* variables, retailer naming (key variables, per-retailer folders) and the path rules
(working file beside the analysts' file, never the same file) are in settings.py; the file operations
themselves (publishing, adopting, checking a path) in snapshots.py.
"""


import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
import tenacity
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ordersync_pipeline.api.client import DEFAULT_BASE_URL, OrderSyncClient
from ordersync_pipeline.storage.object_storage import DEFAULT_KEEP
from ordersync_pipeline.settings import (
    ANALYST_PATH_SETTING,
    DEFAULT_DAYS_IN_FLIGHT,
    DEFAULT_MAX_CONCURRENT_PAGES,
    DEFAULT_STORE_MEMORY_LIMIT,
    WORKING_PATH_SETTING,
    Settings,
    size_in_bytes,
)
from ordersync_pipeline.storage.snapshots import (
    DEFAULT_STORAGE_VERSION,
    adopt_single_file_install,
    check_usable_path,
    explain_open_error,
    is_corruption_error,
    storage_config,
)
from ordersync_pipeline.storage.schema import ensure_schema, sql_string
from ordersync_pipeline.storage.warehouse import explain_lock_error, lock_holder


class OrderSyncResource(dg.ConfigurableResource):
    """The OrderSync Order Status API of one retailer (one key = one retailer)."""

    api_key: str = Field(description="OrderSync API key (pk_live_...). Set it with EnvVar('ORDERSYNC_API_KEY').")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base URL; https only, except loopback.")
    max_concurrent_pages: int = Field(default=DEFAULT_MAX_CONCURRENT_PAGES,
                                      description="by-date pages fetched at once after the first.")
    days_in_flight: int = Field(default=DEFAULT_DAYS_IN_FLIGHT,
                                description="Days of a range fetched ahead while others are stored.")
    requests_per_second: float | None = Field(default=None, description="Client-side request budget; None = no limit.")
    max_attempts: int = Field(default=8, description="Attempts per request on 429/5xx/timeouts/broken bodies.")
    request_budget_seconds: float = Field(default=120.0, description="Total time one request may take, retries included.")
    backoff_initial_seconds: float = Field(default=0.5, description="First retry delay; doubles, with jitter.")
    backoff_max_seconds: float = Field(default=30.0, description="Longest delay between two attempts.")

    def client(self) -> OrderSyncClient:
        return OrderSyncClient(
            self.api_key,
            self.base_url,
            max_concurrent_pages=self.max_concurrent_pages,
            max_connections=self.max_concurrent_pages * self.days_in_flight + 2,
            requests_per_second=self.requests_per_second,
            max_attempts=self.max_attempts,
            request_budget_seconds=self.request_budget_seconds,
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
        )


class OrderSyncWarehouse(DuckDBResource):
    """The pipeline's DuckDB files: `database`, the working file only Dagster runs open, and
    `analyst_database`, the snapshot analysts open, replaced whole after every run whose checks passed."""

    analyst_database: str | None = Field(
        default=None, description="The file analysts open (ORDERSYNC_DUCKDB_PATH); published by analyst_database.")
    storage_version: str = Field(
        default=DEFAULT_STORAGE_VERSION, description="Oldest DuckDB version that must read the files (e.g. v1.4.0).")
    pii_mode: str = Field(default="raw", description="What to store of customer name/email: raw, hash or drop.")
    pii_hash_key: str | None = Field(
        default=None, description="Secret key of the hash mode's HMAC. Set it with EnvVar('ORDERSYNC_PII_HASH_KEY').")
    days_per_transaction: int = Field(
        default=7, ge=1, description="Whole days stored per transaction in a range (fewer commits, same atomicity)."
    )
    lock_timeout_seconds: float = Field(
        default=120.0, description="How long a run waits for another process to release the file before failing."
    )
    publish_url: str | None = Field(
        default=None, description="Object-storage URL the analysts' file is also published to (ORDERSYNC_PUBLISH_URL, "
                                  "e.g. s3://bucket/path/ordersync.duckdb); None: the local file only.")
    publish_keep: int = Field(default=DEFAULT_KEEP, ge=1,
                              description="Versions kept under <URL without .duckdb>/snapshots/ (ORDERSYNC_PUBLISH_KEEP).")
    store_memory_limit: str = Field(
        default=DEFAULT_STORE_MEMORY_LIMIT,
        description="DuckDB memory limit while storing days and checking order_statuses (ORDERSYNC_STORE_MEMORY_LIMIT); "
                    "never above the connection's own memory_limit.")

    @contextmanager
    def connect(self, memory_limit_at_most: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the working file, with the schema in place; `memory_limit_at_most`
        lowers DuckDB's memory limit for this connection (never raises it above the configured one).

        Hand-written instead of DuckDBResource.get_connection(): that one waits a fixed ~100 s on a locked
        file, ends in DuckDB's bare error, and does not close the connection when the body raises. Here the
        wait is configurable, logged, and ends in an error that names the holder and what to do.

        Side effect: an install from before working files existed (only `analyst_database` on disk, no working
        file) has that file adopted as the working file on the first connect (snapshots.adopt_single_file_install:
        the working file starts as a copy of it), and the run's log says so.
        """
        waiting = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_lock_error),
            stop=tenacity.stop_after_delay(self.lock_timeout_seconds),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=5.0),
            before_sleep=_log_lock_wait,
            reraise=True,
        )
        config = {"custom_user_agent": "ordersync-pipeline", **storage_config(self.storage_version),
                  **self.connection_config}
        if self.database != ":memory:":
            if self.analyst_database:  # the public setting first: the working path is usually derived from it
                check_usable_path(self.analyst_database, ANALYST_PATH_SETTING)
            check_usable_path(self.database, WORKING_PATH_SETTING)
            if self.analyst_database:
                adopted = _explaining_errors(self.analyst_database, ANALYST_PATH_SETTING, self.lock_timeout_seconds,
                                             waiting, adopt_single_file_install,
                                             self.analyst_database, self.database, self.storage_version)
                if adopted:
                    dg.get_dagster_logger().info(f"Adopted the existing DuckDB file {self.analyst_database} "
                                                 f"as the working file {self.database}")
        conn = _explaining_errors(self.database, WORKING_PATH_SETTING, self.lock_timeout_seconds,
                                  waiting, duckdb.connect, self.database, read_only=False, config=config)
        try:
            # No progress bar: in a run it would only write terminal escape codes into the captured logs.
            conn.execute("SET enable_progress_bar = false")
            if memory_limit_at_most:
                _lower_memory_limit(conn, memory_limit_at_most, config.get("memory_limit"))
            ensure_schema(conn)
            yield conn
        except duckdb.Error as exc:
            if is_corruption_error(exc):  # a damaged block met mid-run: say so, not DuckDB's bare error
                raise explain_open_error(self.database, WORKING_PATH_SETTING, exc) from None
            raise
        finally:
            conn.close()

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDBResource's entry point, pointed at the same working file as connect()."""
        with self.connect() as conn:
            yield conn


def _lower_memory_limit(conn: duckdb.DuckDBPyConnection, limit: str, configured: str | None) -> None:
    """SET memory_limit to `limit` unless the `configured` one (None: DuckDB's default) is lower."""
    before = conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    conn.execute(f"SET memory_limit = {sql_string(limit)}")
    lowered = conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    if size_in_bytes(before) < size_in_bytes(lowered):
        # The setting as given, not as DuckDB prints it: '15.2 MiB' set again would be 15.1 MiB.
        conn.execute(f"SET memory_limit = {sql_string(configured)}" if configured else "RESET memory_limit")


def _explaining_errors(path: str, setting: str, waited_seconds: float, call, *args, **kwargs):
    """`call(*args, **kwargs)`, with DuckDB's errors about `path` turned into one clear line naming `setting`."""
    try:
        return call(*args, **kwargs)
    except duckdb.Error as exc:
        if _is_lock_error(exc):
            raise explain_lock_error(path, exc, waited_seconds=waited_seconds) from None
        explained = explain_open_error(path, setting, exc)
        if explained is not None:
            raise explained from None
        raise


def _log_lock_wait(retry_state: tenacity.RetryCallState) -> None:
    error = retry_state.outcome.exception() if retry_state.outcome else None
    # The holder, not DuckDB's whole message: with a long path, its first 200 characters ended before the PID.
    dg.get_dagster_logger().warning(f"DuckDB file locked by {lock_holder(error)}, waiting")


# DuckDB's words when another process holds the file. Not just "lock": a corrupt file's errors speak of
# "block"s, and waiting two minutes on a corrupt file, then blaming another process, helped nobody.
_LOCK_ERROR_MARKERS = ("could not set lock on file", "conflicting lock is held")


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, (duckdb.IOException, duckdb.ConnectionException))
            and any(marker in text for marker in _LOCK_ERROR_MARKERS))


def refuse_non_posix() -> None:
    """Publishing relies on POSIX file semantics (renaming over a file analysts hold open, fsync of folders,
    probing a PID with signal 0): refuse other systems at once rather than fail in the middle of a publish."""
    if os.name != "posix":
        raise RuntimeError("ordersync-pipeline runs on POSIX systems only (Linux, macOS): publishing the analysts' "
                           "file renames over a file sessions hold open, which Windows refuses. Run it in WSL or a "
                           "Linux container.")


def resources_from_settings(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The production wiring of one retailer: secrets via EnvVar (never read into code), the rest as set."""
    refuse_non_posix()
    return {
        "ordersync": OrderSyncResource(
            api_key=dg.EnvVar(settings.api_key_variable),
            base_url=settings.base_url,
            max_concurrent_pages=settings.max_concurrent_pages,
            days_in_flight=settings.days_in_flight,
            requests_per_second=settings.requests_per_second,
        ),
        "warehouse": OrderSyncWarehouse(
            database=settings.working_database,
            analyst_database=settings.analyst_database,
            storage_version=settings.storage_version,
            pii_mode=settings.pii_mode,
            # Only through EnvVar, as the API key: never a value in code, config or the run's metadata.
            pii_hash_key=dg.EnvVar(settings.pii_hash_key_variable) if settings.pii_hash_key_variable else None,
            days_per_transaction=settings.days_per_transaction,
            publish_url=settings.publish_url,
            publish_keep=settings.publish_keep,
            store_memory_limit=settings.store_memory_limit,
            # DuckDB caches the blocks it writes up to its memory limit (80% of RAM by default), so a long
            # backfill's memory would grow with the table; past this limit it evicts or spills to disk.
            connection_config={"memory_limit": settings.duckdb_memory_limit},
        ),
    }


def resources_from_env(retailer: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """resources_from_settings(Settings.from_env(retailer=retailer)): every setting checked now, as the
    definitions load. With `retailer`, its key variable, files and publish URL (settings.py)."""
    refuse_non_posix()  # first: reading the settings builds paths, which fail oddly on other systems
    return resources_from_settings(Settings.from_env(retailer=retailer))
