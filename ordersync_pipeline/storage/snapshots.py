"""The two DuckDB files: the pipeline's private working file and the snapshot analysts open.

DuckDB lets one process write a file or many read it, never both, so an analyst's open session would
block the pipeline. The pipeline therefore writes only its working file; after each good run it publishes
a complete copy under the analysts' name with one atomic rename. A session open on the old snapshot keeps
reading it (the rename leaves its inode alive until it closes); a new session sees the new one.

Knows no Dagster and no HTTP.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ordersync_pipeline.storage.schema import apply_comments, sql_identifier, sql_string

# Files are written in this storage format unless configured otherwise: DuckDB 1.4 (LTS), 1.5 and 2.0
# clients all read it, while DBeaver, the DuckDB CLI and BI tools often ship an older DuckDB than ours.
DEFAULT_STORAGE_VERSION = "v1.4.0"
WORKING_FOLDER = ".ordersync-working"  # hidden, so nobody opens the working file by accident
PUBLISHING_INFIX = ".publishing-"


class WarehouseFileError(ValueError):
    """A configured DuckDB path cannot be used; the message names the setting and what to do."""


def default_working_path(published: str) -> str:
    """The working file beside the published one, in a hidden folder: data/.ordersync-working/ordersync.duckdb."""
    path = Path(published)
    return str(path.parent / WORKING_FOLDER / path.name)


def storage_config(storage_version: str) -> dict[str, str]:
    """Connection settings that make DuckDB create new files readable by clients back to `storage_version`."""
    return {"storage_compatibility_version": storage_version}


def check_usable_path(path: str, setting: str) -> None:
    """Fail with one clear line when `path` cannot hold a DuckDB file (a directory, an unwritable folder)."""
    if path.startswith("md:"):
        raise WarehouseFileError(
            f"{setting}={path}: MotherDuck paths are not supported. The pipeline runs DuckDB 2.0, which MotherDuck "
            "does not list among its supported clients (1.4.0-1.5.6), and the analysts' file is published by an "
            "atomic file rename. Point it at a local file; analysts can upload the published file to MotherDuck.")
    target = Path(path)
    if target.is_dir():
        raise WarehouseFileError(f"{setting}={path} is a directory: point it at a file inside it, e.g. "
                                 f"{target / 'ordersync.duckdb'}")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WarehouseFileError(f"{setting}={path}: cannot create its folder {folder} ({exc.strerror}); "
                                 "point the setting at a writable place") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WarehouseFileError(f"{setting}={path}: the folder {folder} is not writable by this user; "
                                 "point the setting at a writable place") from None


def explain_open_error(path: str, setting: str, error: Exception) -> WarehouseFileError | None:
    """DuckDB's error on opening `path`, said in one line with what to do; None if it is not about the file."""
    text = str(error)
    if is_corruption_error(error):
        return WarehouseFileError(
            f"{setting}={path} is corrupt (DuckDB: {text.splitlines()[0][:200]}). Nothing more was written to it. "
            "Move the file aside (keep it to diagnose the disk); if it is the working file, the next run rebuilds it "
            "from the analysts' published file, so re-run the days loaded since that snapshot (its table "
            "published_snapshot says which).")
    if "not a valid DuckDB database file" in text or "Magic number" in text or "unsupported file" in text.lower():
        return WarehouseFileError(
            f"{setting}={path} is not a DuckDB database file (DuckDB: {text.splitlines()[0][:200]}). Point the setting "
            "at a new file name, or move that file away; nothing was written to it.")
    if "Permission denied" in text or "Read-only file system" in text:
        return WarehouseFileError(f"{setting}={path} cannot be opened for writing ({text.splitlines()[0][:200]}); "
                                  "point the setting at a writable place.")
    return None


def is_corruption_error(error: BaseException) -> bool:
    """DuckDB found a block whose checksum does not match: the file's bytes are damaged, waiting won't help."""
    text = str(error)
    return "Corrupt database file" in text or ("checksum" in text and "block" in text)


def adopt_single_file_install(published: str, working: str, storage_version: str) -> bool:
    """Create the working file from an existing install's single file (or a snapshot), if there is none yet.

    Before working files existed the pipeline wrote the analysts' file itself; its first run after the
    upgrade copies that file's tables into the working file, so nothing is lost and no manual step is
    needed. The copy is built under a temporary name and linked into place only if no working file
    appeared meanwhile, so a concurrent run can never replace a working file another run writes to.
    Returns True if it adopted the file.
    """
    if os.path.exists(working) or not os.path.exists(published):
        return False
    remove_leftovers(working)
    partial = f"{_hidden_sibling(working)}{PUBLISHING_INFIX}{os.getpid()}.tmp"
    conn = duckdb.connect(":memory:")
    try:
        # READ_ONLY replays the old file's WAL in memory, so changes not yet checkpointed come along too.
        conn.execute(f"ATTACH {sql_string(published)} AS adopted (READ_ONLY)")
        conn.execute(f"ATTACH {sql_string(partial)} AS working (STORAGE_VERSION {sql_string(storage_version)})")
        conn.execute("COPY FROM DATABASE adopted TO working")
        conn.execute("DETACH adopted")
        conn.execute("DETACH working")  # checkpoints: the file is complete on its own
    finally:
        conn.close()
    _fsync(partial)
    try:
        os.link(partial, working)  # fails if a working file exists by now: keep that one
        adopted = True
    except FileExistsError:
        adopted = False
    finally:
        _remove_with_wal(partial)
    _fsync_folder(Path(working).parent)
    return adopted


SNAPSHOT_INFO_SQL = """
CREATE OR REPLACE TABLE published_snapshot AS
SELECT $published_at::TIMESTAMPTZ AS published_at, $run_id AS dagster_run_id, $as_of::DATE AS as_of_day,
       (SELECT min(order_day) FROM order_statuses) AS first_order_day,
       (SELECT max(order_day) FROM order_statuses) AS last_order_day,
       (SELECT count(*) FROM order_status_loads) AS days_loaded,
       (SELECT count(*) FROM order_statuses) AS order_lines,
       $storage_version AS storage_version
"""
SNAPSHOT_INFO_COMMENTS = {
    "published_snapshot": (
        "One row: when this analysts' file was published and what it covers. The pipeline writes a private "
        "working file and replaces this file with a complete copy after every run whose checks passed; this row "
        "is written into the copy itself, just before it replaces the previous file.",
        {"published_at": "When this copy was completed and swapped in (UTC; milliseconds before the rename)",
         "dagster_run_id": "The Dagster run that published it",
         "as_of_day": "Day the marts in this file are as of (open_orders, stuck_lines); an older partition run "
                      "late keeps newer marts, and this day says so",
         "first_order_day": "First UTC order day held", "last_order_day": "Last UTC order day held",
         "days_loaded": "Days loaded from the by-date endpoint", "order_lines": "Rows of order_statuses",
         "storage_version": "Oldest DuckDB version that reads this file"},
    ),
}


class PublishError(RuntimeError):
    """Publishing failed; the previous published file is untouched and nothing was left beside it."""


@dataclass(frozen=True)
class PublishedSnapshot:
    path: str
    published_at: dt.datetime
    size_bytes: int
    row_counts: dict[str, int]
    seconds: float
    copied_file: bool  # False: rewritten through DuckDB (the working file had another storage version)
    readwrite_holder: str | None  # a process that held the old snapshot read-write (a mistake), if any


def publish(conn: duckdb.DuckDBPyConnection, published: str, storage_version: str, *, run_id: str,
            as_of: dt.date) -> PublishedSnapshot:
    """Replace the analysts' file with a complete copy of the working database `conn` is open on.

    `conn` must be the only connection to the working file (the caller holds DuckDB's write lock). Steps:
    CHECKPOINT (the file alone is then complete), copy it next to the published file under a temporary name,
    write the `published_snapshot` row into the copy, fsync, count its rows, remove a WAL an analyst may
    have left beside the published file, rename the copy over it (through a symlink, to its target; with the
    previous file's permissions). A run killed at any step leaves the old snapshot or the new one, whole; the
    next run removes the leftover temporary file. Any failure (a full disk among them) removes the copy and
    raises PublishError saying what happened, with the previous file untouched.
    """
    started = time.monotonic()
    target = os.path.realpath(published)  # a symlinked published path stays a link to the new file
    working = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    remove_leftovers(target)
    partial = f"{_hidden_sibling(target)}{PUBLISHING_INFIX}{os.getpid()}.tmp"
    conn.execute("CHECKPOINT")
    copied_file = _storage_tag(conn, _catalog(conn)) == _storage_tag_written_for(conn, storage_version)
    try:
        if copied_file:
            shutil.copyfile(working, partial)
        else:  # the working file predates the storage-version setting: rewrite it in the configured format
            conn.execute(f"ATTACH {sql_string(partial)} AS snapshot (STORAGE_VERSION {sql_string(storage_version)})")
            try:
                conn.execute(f"COPY FROM DATABASE {sql_identifier(_catalog(conn))} TO snapshot")
            finally:
                conn.execute("DETACH snapshot")
        # To the second: the same moment names the version uploaded to object storage (object_storage.py).
        published_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        with duckdb.connect(partial, config=storage_config(storage_version)) as snapshot:
            snapshot.execute(SNAPSHOT_INFO_SQL, {"published_at": published_at, "run_id": run_id, "as_of": as_of,
                                                 "storage_version": storage_version})
            apply_comments(snapshot, SNAPSHOT_INFO_COMMENTS)
            snapshot.execute("CHECKPOINT")
            row_counts = {table: snapshot.execute(f"SELECT count(*) FROM {sql_identifier(table)}").fetchall()[0][0]
                          for (table,) in snapshot.execute(
                              "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1").fetchall()}
        _remove(f"{partial}.wal")
        _fsync(partial)
        if os.path.exists(target):
            os.chmod(partial, stat.S_IMODE(os.stat(target).st_mode))
        holder = _readwrite_holder(target)
        # A WAL beside the published file would be replayed against the new file and make every open fail.
        _remove(f"{target}.wal")
        os.replace(partial, target)
    except (OSError, duckdb.Error) as exc:
        _remove_with_wal(partial)
        raise _explain_publish_failure(published, target, working, exc) from None
    _fsync_folder(Path(target).parent)
    return PublishedSnapshot(published, published_at, os.path.getsize(target), row_counts,
                             time.monotonic() - started, copied_file, holder)


def _explain_publish_failure(published: str, target: str, working: str, exc: BaseException) -> PublishError:
    folder = Path(target).parent
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    needed = os.path.getsize(working) if os.path.exists(working) else 0
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc):  # DuckDB's words for it too
        return PublishError(
            f"Publishing {published} failed: its folder {folder} has {free / 1e6:.1f} MB free and the copy needs "
            f"{needed / 1e6:.1f} MB (the size of the working file). The previous published file is unchanged and "
            "no partial copy was left. Free space there, or point ORDERSYNC_DUCKDB_PATH at a larger disk, and "
            "re-run: the next run publishes without any other step.")
    return PublishError(
        f"Publishing {published} failed ({first_line}). The previous published file is unchanged and no partial "
        "copy was left; fix the cause and re-run.")


def remove_leftovers(path: str) -> list[str]:
    """Temporary copies a killed publish or adoption left beside `path` (never one a live process writes)."""
    prefix = Path(f"{_hidden_sibling(path)}{PUBLISHING_INFIX}")
    removed = []
    for leftover in prefix.parent.glob(f"{prefix.name}*.tmp*"):
        pid = leftover.name[len(prefix.name):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        _remove(str(leftover))
        removed.append(str(leftover))
    return removed


def _readwrite_holder(published: str) -> str | None:
    """Who holds the published file read-write (an analyst's mistake), by DuckDB's own lock message."""
    if not os.path.exists(published):
        return None
    try:
        duckdb.connect(published, read_only=True).close()
    except duckdb.Error as exc:
        text = str(exc)
        marker = "Conflicting lock is held in "
        return text.split(marker, 1)[1].splitlines()[0] if marker in text else None
    return None


def _storage_tag(conn: duckdb.DuckDBPyConnection, catalog: str) -> str:
    """DuckDB's name for a file's storage format, e.g. 'v1.4.0+' (several settings map to one format)."""
    (tags,) = conn.execute("SELECT tags FROM duckdb_databases() WHERE database_name = ?", [catalog]).fetchall()[0]
    return (tags or {}).get("storage_version", "")


def _storage_tag_written_for(conn: duckdb.DuckDBPyConnection, storage_version: str) -> str:
    """The storage format DuckDB writes for `storage_version`, read off a throwaway file."""
    with tempfile.TemporaryDirectory() as folder:
        probe = os.path.join(folder, "probe.duckdb")
        conn.execute(f"ATTACH {sql_string(probe)} AS storage_probe (STORAGE_VERSION {sql_string(storage_version)})")
        try:
            return _storage_tag(conn, "storage_probe")
        finally:
            conn.execute("DETACH storage_probe")


def _catalog(conn: duckdb.DuckDBPyConnection) -> str:
    return conn.execute("SELECT current_database()").fetchall()[0][0]


def _hidden_sibling(path: str) -> str:
    target = Path(path)
    return str(target.parent / f".{target.name}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    _fsync(str(folder))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_with_wal(path: str) -> None:
    _remove(path)
    _remove(f"{path}.wal")
