"""The DuckDB side of the raw tables: replacing days atomically, applying refreshes, recording history.

Knows no HTTP and no Dagster. Frames come from normalise.py and are inserted through Arrow
(`INSERT ... BY NAME SELECT * FROM frame`, the frame wrapped in `ArrowStream`), never row by row. Each write
is one transaction, so a run that dies at any point leaves a day either fully old or fully new.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import duckdb
import polars as pl

from ordersync_pipeline.normalise import ORDER_STATUS_SCHEMA, REJECT_SCHEMA, UTC_TIMESTAMP
from ordersync_pipeline.storage.schema import transaction
from ordersync_pipeline.vocabulary import status_key_sql

class WarehouseLockedError(RuntimeError):
    """The DuckDB file is held by another process; nothing was written."""


@dataclass(frozen=True)
class DayLoad:
    """What a by-date fetch of one day produced, ready to be stored."""

    day: dt.date
    rows: pl.DataFrame
    rejects: pl.DataFrame
    api_total: int
    duplicates_dropped: int
    pages_fetched: int
    paging_passes: int
    paging_duplicates: int  # lines the API returned twice while paging (dropped by the client)
    api_total_consistent: bool
    extra_field_names: tuple[str, ...]
    fetched_at: dt.datetime
    # The API's clock when the day was read (see client.DayFetch): the time history records. None: fetched_at.
    observed_at: dt.datetime | None = None


class ArrowStream:
    """A polars frame as DuckDB reads it in SQL without pyarrow: through the Arrow PyCapsule interface.

    Given a polars frame itself, DuckDB converts it to a pyarrow Table, and importing pyarrow adds ~43 MB to
    the process's RSS; an object with `__arrow_c_stream__` it scans directly. Scanned by several statements,
    it is as fast as a pyarrow Table converted once (200,000 rows, 5 inserts: 45 ms each, both).
    """

    def __init__(self, frame: pl.DataFrame):
        self.frame = frame

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self.frame.__arrow_c_stream__(requested_schema)


def replace_days(conn: duckdb.DuckDBPyConnection, loads: list[DayLoad]) -> set[dt.date]:
    """Swap whole days' rows, rejects and load records, and record status history, in one transaction.

    Several days per transaction keep a long backfill from paying DuckDB's per-statement and per-commit
    cost once per day; each day is still either fully old or fully new.

    A line belongs to the one day its latest order_date says. One the API now returns under another day
    (an order_date corrected upstream) moves: it leaves its old day, its history spells follow it, and
    the old day is returned for re-reading, because the old day's stored lines no longer match the total its
    load recorded (so is a day of `loads` whose line a later read of another of these days took). Lines of
    these days the fetch no longer returned go to `vanished_lines`. Returns the days to re-read through by-date.
    """
    days = [load.day for load in loads]
    if len(set(days)) != len(days):
        raise ValueError(f"replace_days got the same day twice: {days}")
    latest, superseded_days = _one_row_per_line(pl.concat([_observations_with_rows(load) for load in loads]))
    rows = ArrowStream(latest.select(list(ORDER_STATUS_SCHEMA)))
    observed = ArrowStream(latest.select("order_status_id", "order_day", "status", "observed_at"))
    day_observed = ArrowStream(pl.DataFrame({"order_day": days, "observed_at": [
        load.observed_at or load.fetched_at for load in loads]}, schema={"order_day": pl.Date, "observed_at": UTC_TIMESTAMP}))
    rejects = ArrowStream(pl.concat([load.rejects.select(list(REJECT_SCHEMA)) for load in loads]).with_columns(
        pl.lit("by-date").alias("source")))
    day_loads = ArrowStream(pl.DataFrame(
        {"order_day": days, "api_total": [load.api_total for load in loads],
         "rows_stored": [load.rows.height for load in loads], "rejects": [load.rejects.height for load in loads],
         "duplicates_dropped": [load.duplicates_dropped for load in loads],
         "pages_fetched": [load.pages_fetched for load in loads], "paging_passes": [load.paging_passes for load in loads],
         "paging_duplicates": [load.paging_duplicates for load in loads],
         "api_total_consistent": [load.api_total_consistent for load in loads],
         "extra_field_names": [list(load.extra_field_names) for load in loads],
         "fetched_at": [load.fetched_at for load in loads]},
        schema_overrides={"extra_field_names": pl.List(pl.String)},
    ))
    # The range bounds let DuckDB skip row groups by their min/max order_day; the list is what is replaced.
    in_days = f"order_day BETWEEN DATE '{min(days)}' AND DATE '{max(days)}' AND order_day IN ({_date_list(days)})"
    with transaction(conn):
        moved_from = _take_moved_lines(conn, rows)
        conn.execute(f"""
            INSERT INTO vanished_lines BY NAME
            SELECT s.*, h.last_seen_at, d.observed_at AS vanished_at
            FROM (SELECT * FROM order_statuses WHERE {in_days}) AS s
            JOIN day_observed AS d USING (order_day)
            LEFT JOIN (SELECT order_status_id, last_seen_at FROM order_status_history
                       WHERE is_latest AND {in_days}) AS h USING (order_status_id)
            WHERE s.order_status_id NOT IN (SELECT order_status_id FROM rows)
        """)
        conn.execute(f"DELETE FROM order_statuses WHERE {in_days}")
        conn.execute("INSERT INTO order_statuses BY NAME SELECT * FROM rows")
        conn.execute(f"DELETE FROM order_status_rejects WHERE {in_days} AND source = 'by-date'")
        conn.execute("INSERT INTO order_status_rejects BY NAME SELECT * FROM rejects")
        conn.execute(f"DELETE FROM order_status_loads WHERE {in_days}")
        conn.execute("INSERT INTO order_status_loads BY NAME SELECT * FROM day_loads")
        _record_history(conn, observed, days=days)
    return (moved_from - set(days)) | superseded_days


def _observations_with_rows(load: DayLoad) -> pl.DataFrame:
    """A load's rows with when they were observed (the API's clock; the fetch time if it sent none)."""
    when = load.observed_at or load.fetched_at
    return load.rows.select(list(ORDER_STATUS_SCHEMA)).with_columns(pl.lit(when).cast(UTC_TIMESTAMP).alias("observed_at"))


def _one_row_per_line(fetched: pl.DataFrame) -> tuple[pl.DataFrame, set[dt.date]]:
    """`fetched` with one row per line, in its order (rows stored in day order keep DuckDB's zone maps on
    order_day tight), and the days that lost a line: read while the API moved it between two of these days,
    the later observation says where it is."""
    if fetched["order_status_id"].n_unique() == fetched.height:  # the usual case, checked cheaply
        return fetched, set()
    numbered = fetched.with_row_index("_row")
    kept = numbered.sort("observed_at", "_row").unique("order_status_id", keep="last").select("_row")
    superseded = set(numbered.join(kept, on="_row", how="anti")["order_day"])
    return numbered.join(kept, on="_row", how="semi").sort("_row").drop("_row"), superseded


def _take_moved_lines(conn: duckdb.DuckDBPyConnection, rows: ArrowStream) -> set[dt.date]:
    """Remove from their old day (or from vanished_lines) the lines `rows` now places on another day, moving
    their history spells along; return the days they left (those outside the batch are to be re-read)."""
    moved = pl.DataFrame(conn.sql("""
        SELECT r.order_status_id, r.order_day AS new_day, s.order_day AS old_day, s.vanished
        FROM (SELECT order_status_id, order_day FROM rows) AS r
        JOIN (SELECT order_status_id, order_day, false AS vanished FROM order_statuses
              UNION ALL SELECT order_status_id, order_day, true FROM vanished_lines) AS s USING (order_status_id)
        WHERE s.order_day <> r.order_day OR s.vanished
    """))
    if moved.is_empty():
        return set()
    moved_lines = ArrowStream(moved)
    conn.execute("DELETE FROM order_statuses AS s USING moved_lines AS m "
                 "WHERE s.order_status_id = m.order_status_id AND s.order_day = m.old_day AND NOT m.vanished")
    conn.execute("DELETE FROM vanished_lines WHERE order_status_id IN (SELECT order_status_id FROM moved_lines)")
    # Spells carry the line's day, so that storing a day scans only that day's history.
    conn.execute("UPDATE order_status_history AS h SET order_day = m.new_day FROM moved_lines AS m "
                 "WHERE h.order_status_id = m.order_status_id AND h.order_day IS DISTINCT FROM m.new_day")
    return set(moved.filter(~pl.col("vanished") & (pl.col("old_day") != pl.col("new_day")))["old_day"])


def _date_list(days: list[dt.date]) -> str:
    return ", ".join(f"DATE '{day.isoformat()}'" for day in days)


@dataclass(frozen=True)
class RefreshedLines:
    updated: int  # stored lines overwritten with what a look-up returned
    days_to_reread: set[dt.date]  # loaded days a look-up showed changed: a line moved in or out, or went missing


def apply_refreshed_statuses(
    conn: duckdb.DuckDBPyConnection, rows: pl.DataFrame, rejects: pl.DataFrame, observed_at: dt.datetime | None = None,
    *, looked_up: pl.DataFrame | None = None,
) -> RefreshedLines:
    """Overwrite the lines a look-up returned (matched by order_status_id) where they stay on their day.

    Only lines already stored are updated: a line of a day not loaded yet arrives with that day's load.
    A line returned under another day than stored, and a `looked_up` line (order_status_id, order_day) the
    look-up did not return, are left as they are: their loaded days are returned, to be re-read through
    by-date, which moves or retires lines while keeping each day's count equal to the API's.
    `observed_at`: the API's clock at the look-up, recorded in history (default: the rows' fetched_at).
    """
    frame = rows.select(list(ORDER_STATUS_SCHEMA))
    rows = ArrowStream(frame)
    rejects = ArrowStream(rejects.select(list(REJECT_SCHEMA)).with_columns(pl.lit("by-po-numbers").alias("source")))
    missing = ArrowStream(looked_up.select("order_status_id", "order_day") if looked_up is not None
                          else pl.DataFrame(schema={"order_status_id": pl.String, "order_day": pl.Date}))
    assignments = ", ".join(f"{name} = r.{name}" for name in ORDER_STATUS_SCHEMA if name != "order_status_id")
    with transaction(conn):
        # Both days of a line returned under another day (one scan of the table), and the day of each line missing.
        changed_days = {day for (day,) in conn.execute("""
            SELECT DISTINCT d.order_day FROM (
                SELECT unnest([s.order_day, r.order_day]) AS order_day
                FROM order_statuses AS s JOIN rows AS r USING (order_status_id) WHERE s.order_day <> r.order_day
                UNION ALL SELECT order_day FROM missing WHERE order_status_id NOT IN (SELECT order_status_id FROM rows)
            ) AS d SEMI JOIN order_status_loads USING (order_day)
        """).fetchall()}
        updated = conn.execute(
            f"UPDATE order_statuses AS t SET {assignments} FROM rows AS r "
            "WHERE t.order_status_id = r.order_status_id AND t.order_day = r.order_day"
        ).fetchall()[0][0]
        # Rejects of look-ups belong to no day: keep only the latest refresh's.
        conn.execute("DELETE FROM order_status_rejects WHERE source = 'by-po-numbers'")
        conn.execute("INSERT INTO order_status_rejects BY NAME SELECT * FROM rejects")
        observed = ArrowStream(_observations(frame, observed_at))
        stored = pl.DataFrame(conn.sql(
            "SELECT o.* FROM observed AS o SEMI JOIN order_statuses AS s "
            "ON s.order_status_id = o.order_status_id AND s.order_day = o.order_day"))
        _record_history(conn, ArrowStream(stored))
    return RefreshedLines(int(updated), changed_days)


def _observations(rows: pl.DataFrame, observed_at: dt.datetime | None) -> pl.DataFrame:
    """What history needs of stored rows: id, day, status and when observed (the fetch time if unknown)."""
    when = pl.lit(observed_at).cast(rows.schema["fetched_at"]) if observed_at is not None else pl.col("fetched_at")
    return rows.select("order_status_id", "order_day", "status", when.alias("observed_at"))


def _record_history(conn: duckdb.DuckDBPyConnection, observed: ArrowStream, days: list[dt.date] | None = None) -> None:
    """Extend each observed line's current status spell, or close it and open a new one if its status changed.

    Statuses are compared by vocabulary.status_key_sql, so a new spelling of the same status extends the spell.
    `observed`: order_status_id, order_day, status, observed_at.
    `days`: all rows are of these order_days, so only their history is scanned (zone maps skip the rest).
    """
    latest = "h.is_latest"
    if days:
        latest += f" AND h.order_day BETWEEN DATE '{min(days)}' AND DATE '{max(days)}'"
    same_status = f"{status_key_sql('h.status')} = {status_key_sql('o.status')}"
    conn.execute(f"""
        UPDATE order_status_history AS h SET last_seen_at = greatest(h.last_seen_at, o.observed_at)
        FROM observed AS o
        WHERE {latest} AND h.order_status_id = o.order_status_id AND {same_status}
    """)
    conn.execute(f"""
        UPDATE order_status_history AS h SET is_latest = false
        FROM observed AS o
        WHERE {latest} AND h.order_status_id = o.order_status_id AND NOT ({same_status})
    """)
    conn.execute(f"""
        INSERT INTO order_status_history
        SELECT o.order_status_id, o.order_day, o.status, o.observed_at, o.observed_at, true
        FROM observed AS o ANTI JOIN (SELECT order_status_id FROM order_status_history AS h WHERE {latest}) AS h
            USING (order_status_id)
    """)


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def lock_holder(error: Exception) -> str:
    """Who holds the DuckDB file, as its lock error names it: 'PROGRAM (PID N)'; else DuckDB's own words."""
    match = _LOCK_HOLDER.search(str(error))
    if match:
        return f"{match['program']} (PID {match['pid']})"
    return f"another process (DuckDB: {str(error).splitlines()[0][:300]})"


def explain_lock_error(path: str, error: Exception, waited_seconds: float) -> WarehouseLockedError:
    """Turn DuckDB's lock error into one that says who holds the file and what to do."""
    holder = lock_holder(error)
    return WarehouseLockedError(
        f"The DuckDB file {path} is locked by {holder}; this run waited {waited_seconds:g} s for it and could not "
        "write, so nothing was written or lost. DuckDB allows one writer or many readers, never both, so only the "
        "pipeline's runs should open its working file: analysts open the published file (ORDERSYNC_DUCKDB_PATH), "
        "which never blocks a run. Close that session and re-run the partition."
    )
