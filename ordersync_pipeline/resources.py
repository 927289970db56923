"""Dagster resources: the OrderSync API client and the DuckDB warehouse, configured from the environment."""


import datetime as dt
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import tenacity
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ordersync_pipeline.client import DEFAULT_BASE_URL, OrderSyncClient
from ordersync_pipeline.normalise import PII_MODES
from ordersync_pipeline.object_storage import (
    DEFAULT_KEEP,
    PUBLISH_KEEP_SETTING,
    PUBLISH_URL_SETTING,
    parse_publish_url,
    retailer_publish_url,
)
from ordersync_pipeline.snapshots import (
    DEFAULT_STORAGE_VERSION,
    WarehouseFileError,
    check_usable_path,
    default_working_path,
    explain_open_error,
    is_corruption_error,
    storage_config,
    adopt_single_file_install,
)
from ordersync_pipeline.warehouse import ensure_schema, explain_lock_error, lock_holder, sql_string

DEFAULT_DUCKDB_PATH = "data/ordersync.duckdb"
ANALYST_PATH_SETTING = "ORDERSYNC_DUCKDB_PATH"
WORKING_PATH_SETTING = "ORDERSYNC_WORKING_DUCKDB_PATH"
PII_HASH_KEY_SETTING = "ORDERSYNC_PII_HASH_KEY"


class OrderSyncResource(dg.ConfigurableResource):
    """The OrderSync Order Status API of one retailer (one key = one retailer)."""

    api_key: str = Field(description="OrderSync API key (pk_live_...). Set it with EnvVar('ORDERSYNC_API_KEY').")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base URL; https only, except loopback.")
    max_concurrent_pages: int = Field(default=4, description="by-date pages fetched at once after the first.")
    days_in_flight: int = Field(default=4, description="Days of a range fetched ahead while others are stored.")
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

    @contextmanager
    def connect(self, memory_limit_at_most: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the working file, with the schema in place; `memory_limit_at_most`
        lowers DuckDB's memory limit for this connection (never raises it above the configured one).

        Hand-written instead of DuckDBResource.get_connection(): that one waits a fixed ~100 s on a locked
        file, ends in DuckDB's bare error, and does not close the connection when the body raises. Here the
        wait is configurable, logged, and ends in an error that names the holder and what to do. An install
        from before working files existed has its single file adopted on the first connect.
        """
        waiting = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_lock_error),
            stop=tenacity.stop_after_delay(self.lock_timeout_seconds),
            wait=tenacity.wait_exponential_jitter(initial=0.1, max=5.0),
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
    if _size_in_bytes(before) < _size_in_bytes(lowered):
        # The setting as given, not as DuckDB prints it: '15.2 MiB' set again would be 15.1 MiB.
        conn.execute(f"SET memory_limit = {sql_string(configured)}" if configured else "RESET memory_limit")


_SIZE_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}


def _size_in_bytes(size: str) -> float:
    """A size as DuckDB prints it ('244.1 MiB', '0 bytes'), in bytes."""
    match = re.fullmatch(r"([\d.]+) (\w+)", size.strip())
    if not match or match[2] not in _SIZE_UNITS:
        raise ValueError(f"unexpected DuckDB memory size {size!r}")
    return float(match[1]) * _SIZE_UNITS[match[2]]


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


# Every ORDERSYNC_* setting is read through one of these, one per kind of value, so a bad value fails as
# the definitions load (before any run opens the DuckDB file) with one line naming the variable.

def number_from_env(name: str, default: str, kind: type = int, minimum: float = 1):
    """An int/float setting from the environment, or an error naming the variable and what it expects."""
    value = os.environ.get(name, default)
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number >= {minimum:g}, got {value!r}")
    return number


def choice_from_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def date_from_env(name: str, default: str) -> str:
    value = os.environ.get(name, default)
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} must be a date in YYYY-MM-DD form, got {value!r}") from None
    return value


def duckdb_setting_from_env(name: str, default: str, setting: str, expected: str) -> str:
    """A value for DuckDB setting `setting`, checked by DuckDB itself on a throwaway in-memory connection."""
    value = os.environ.get(name) or default
    try:
        duckdb.connect(":memory:", config={setting: value}).close()
    except duckdb.Error as exc:
        raise ValueError(f"{name} must be {expected}, got {value!r} ({str(exc).splitlines()[0][:150]})") from None
    return value


def lookback_days_from_env() -> int:
    return number_from_env("ORDERSYNC_LOOKBACK_DAYS", "14", minimum=0)


def stuck_after_days_from_env() -> int:
    return number_from_env("ORDERSYNC_STUCK_AFTER_DAYS", "5")


def freshness_hours_from_env() -> float:
    """ORDERSYNC_FRESHNESS_HOURS: how old the last good materialization may be (freshness.py)."""
    return number_from_env("ORDERSYNC_FRESHNESS_HOURS", "26", float, minimum=0.001)


def delivery_target_days_from_env() -> int:
    return number_from_env("ORDERSYNC_DELIVERY_TARGET_DAYS", "7")


RETAILERS_SETTING = "ORDERSYNC_RETAILERS"
_RETAILER_NAME = re.compile(r"[a-z0-9_]+")


def retailers_from_env() -> list[str]:
    """The retailer names in ORDERSYNC_RETAILERS (e.g. `acme,globex`); empty when unset (one retailer, as ever)."""
    value = os.environ.get(RETAILERS_SETTING, "")
    names = [name.strip() for name in value.split(",")] if value.strip() else []
    bad = [name for name in names if not _RETAILER_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"{RETAILERS_SETTING} must list retailer names of lower-case letters, digits and _ separated "
                         f"by commas (e.g. acme,globex); got {value!r}, where {', '.join(map(repr, bad))} is not such a "
                         "name")
    if len(set(names)) != len(names):
        raise ValueError(f"{RETAILERS_SETTING} names a retailer twice: {value!r}")
    return names


def api_key_setting(retailer: str | None) -> str:
    """The variable holding the OrderSync key: ORDERSYNC_API_KEY, or ORDERSYNC_API_KEY_ACME for retailer acme."""
    return f"ORDERSYNC_API_KEY_{retailer.upper()}" if retailer else "ORDERSYNC_API_KEY"


def retailer_path(path: str, retailer: str | None) -> str:
    """`path` moved into a folder named after the retailer: data/ordersync.duckdb -> data/acme/ordersync.duckdb."""
    return str(Path(path).parent / retailer / Path(path).name) if retailer else path


def refuse_same_file(published: str, working: str) -> None:
    """The working file must not be the analysts' file: publishing would copy a file over itself, and an
    analyst's session would block every run again."""
    def real(path: str) -> str:
        return os.path.realpath(os.path.abspath(path))
    same = real(published) == real(working)
    if not same and os.path.exists(published) and os.path.exists(working):
        same = os.path.samefile(published, working)  # hard links
    if same:
        raise WarehouseFileError(
            f"{WORKING_PATH_SETTING}={working} is the same file as {ANALYST_PATH_SETTING}={published}: the pipeline "
            f"writes its working file and publishes a copy for analysts, so they must differ. Unset "
            f"{WORKING_PATH_SETTING} (it defaults to a hidden folder beside the analysts' file) or point it elsewhere.")


def refuse_non_posix() -> None:
    """Publishing relies on POSIX file semantics (renaming over a file analysts hold open, fsync of folders,
    probing a PID with signal 0): refuse other systems at once rather than fail in the middle of a publish."""
    if os.name != "posix":
        raise RuntimeError("ordersync-pipeline runs on POSIX systems only (Linux, macOS): publishing the analysts' "
                           "file renames over a file sessions hold open, which Windows refuses. Run it in WSL or a "
                           "Linux container.")


def publish_url_setting(retailer: str | None) -> str:
    """The variable naming a retailer's own publish URL: ORDERSYNC_PUBLISH_URL_ACME for retailer acme."""
    return f"{PUBLISH_URL_SETTING}_{retailer.upper()}" if retailer else PUBLISH_URL_SETTING


def publish_url_from_env(retailer: str | None = None) -> str | None:
    """Where the analysts' file is published in object storage, checked; None when ORDERSYNC_PUBLISH_URL is unset.

    A retailer publishes to ORDERSYNC_PUBLISH_URL_<RETAILER> if set, else to ORDERSYNC_PUBLISH_URL with the
    retailer's name as a folder before the file name (as retailer_path() does for local files).
    """
    if retailer and os.environ.get(publish_url_setting(retailer)):
        setting = publish_url_setting(retailer)
        url = os.environ[setting]
    elif os.environ.get(PUBLISH_URL_SETTING):
        setting = PUBLISH_URL_SETTING
        parse_publish_url(os.environ[setting], setting)  # the shared URL itself must be good too
        url = retailer_publish_url(os.environ[setting], retailer)
    else:
        return None
    parse_publish_url(url, setting)
    return url


def resources_from_env(retailer: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The production wiring: the key via EnvVar (never read into code), the rest with defaults.

    Every setting is checked here, when the definitions load. ORDERSYNC_START_DATE is read (with
    date_from_env) by partitions.py, earlier still.
    With `retailer`, the key is ORDERSYNC_API_KEY_<RETAILER>, both DuckDB files sit in a folder named after
    the retailer beside where the settings point, and so does its publish URL (publish_url_from_env);
    every other setting is shared.
    """
    refuse_non_posix()
    # Read by the runs' config (refresh, stuck_lines, supplier_scorecard), and checked here too so that a bad
    # value cannot fail a daily run after its day was stored.
    lookback_days_from_env()
    stuck_after_days_from_env()
    delivery_target_days_from_env()
    pii_mode = choice_from_env("ORDERSYNC_PII_MODE", "raw", PII_MODES)
    if pii_mode == "hash" and not os.environ.get(PII_HASH_KEY_SETTING):
        raise ValueError(f"ORDERSYNC_PII_MODE=hash needs {PII_HASH_KEY_SETTING}: a secret of at least 16 characters "
                         "(e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`), kept like the API key")
    analyst_database = retailer_path(os.environ.get(ANALYST_PATH_SETTING) or DEFAULT_DUCKDB_PATH, retailer)
    working_database = os.environ.get(WORKING_PATH_SETTING)
    working = retailer_path(working_database, retailer) if working_database else default_working_path(analyst_database)
    refuse_same_file(analyst_database, working)
    return {
        "ordersync": OrderSyncResource(
            api_key=dg.EnvVar(api_key_setting(retailer)),
            base_url=os.environ.get("ORDERSYNC_BASE_URL", DEFAULT_BASE_URL),
            max_concurrent_pages=number_from_env("ORDERSYNC_MAX_CONCURRENT_PAGES", "4"),
            days_in_flight=number_from_env("ORDERSYNC_DAYS_IN_FLIGHT", "4"),
            requests_per_second=(number_from_env("ORDERSYNC_REQUESTS_PER_SECOND", "", float, minimum=0.001)
                                 if os.environ.get("ORDERSYNC_REQUESTS_PER_SECOND") else None),
        ),
        "warehouse": OrderSyncWarehouse(
            database=working,
            analyst_database=analyst_database,
            storage_version=duckdb_setting_from_env(
                "ORDERSYNC_DUCKDB_STORAGE_VERSION", DEFAULT_STORAGE_VERSION, "storage_compatibility_version",
                f"a DuckDB version such as {DEFAULT_STORAGE_VERSION}: the oldest DuckDB that must read the files"),
            pii_mode=pii_mode,
            # Only through EnvVar, as the API key: never a value in code, config or the run's metadata.
            pii_hash_key=dg.EnvVar(PII_HASH_KEY_SETTING) if pii_mode == "hash" else None,
            days_per_transaction=number_from_env("ORDERSYNC_DAYS_PER_TRANSACTION", "7"),
            publish_url=publish_url_from_env(retailer),
            publish_keep=number_from_env(PUBLISH_KEEP_SETTING, str(DEFAULT_KEEP)),
            # DuckDB caches the blocks it writes up to its memory limit (80% of RAM by default), so a long
            # backfill's memory would grow with the table; past this limit it evicts or spills to disk.
            connection_config={"memory_limit": duckdb_setting_from_env(
                "ORDERSYNC_DUCKDB_MEMORY_LIMIT", "256MB", "memory_limit", "a memory size such as 256MB or 2GB")},
        ),
    }
