"""The DuckDB side of the raw tables: schema, comments, replacing a day atomically, applying refreshes.

Knows no HTTP and no Dagster. Frames come from normalise.py and are inserted through Arrow
(`INSERT ... BY NAME SELECT * FROM frame`, the frame wrapped in `ArrowStream`), never row by row. Each write
is one transaction, so a run that dies at any point leaves a day either fully old or fully new.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import polars as pl

from ordersync_pipeline.normalise import ORDER_STATUS_SCHEMA, REJECT_SCHEMA, UTC_TIMESTAMP
from ordersync_pipeline.vocabulary import status_key_sql

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS order_statuses (
    order_id VARCHAR,
    order_status_id VARCHAR NOT NULL,
    supplier_order_id VARCHAR,
    order_date TIMESTAMPTZ NOT NULL,
    po_number VARCHAR,
    item VARCHAR,
    customer VARCHAR,
    supplier VARCHAR,
    status VARCHAR,
    customer_email VARCHAR,
    tracking_number VARCHAR,
    tracking_url VARCHAR,
    carrier VARCHAR,
    delivery_date TIMESTAMPTZ,
    delivery_utc_offset VARCHAR,
    order_day DATE NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    extra_fields VARCHAR
);
CREATE TABLE IF NOT EXISTS order_status_rejects (
    order_day DATE,
    order_status_id VARCHAR,
    reason VARCHAR NOT NULL,
    raw_json VARCHAR NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    source VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS order_status_loads (
    order_day DATE NOT NULL,
    api_total INTEGER NOT NULL,
    rows_stored INTEGER NOT NULL,
    rejects INTEGER NOT NULL,
    duplicates_dropped INTEGER NOT NULL,
    pages_fetched INTEGER NOT NULL,
    paging_passes INTEGER NOT NULL,
    paging_duplicates INTEGER NOT NULL,
    api_total_consistent BOOLEAN NOT NULL,
    extra_field_names VARCHAR[],
    fetched_at TIMESTAMPTZ NOT NULL
);
-- The columns of order_statuses, as they were when last seen, and when the line went missing.
CREATE TABLE IF NOT EXISTS vanished_lines AS
SELECT *, NULL::TIMESTAMPTZ AS last_seen_at, NULL::TIMESTAMPTZ AS vanished_at FROM order_statuses LIMIT 0;
CREATE TABLE IF NOT EXISTS order_status_history (
    order_status_id VARCHAR NOT NULL,
    order_day DATE,
    status VARCHAR,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    is_latest BOOLEAN NOT NULL
);
"""

COMMENTS = {
    "order_statuses": (
        "One row per OrderSync order line (order_status_id) with its latest known status. Loaded per UTC day "
        "of order_date from the by-date endpoint; open lines refreshed daily via by-po-numbers.",
        {
            "order_id": "OrderSync order id; several lines can share it",
            "order_status_id": "The line's own id (unique per row)",
            "supplier_order_id": "Order id assigned by the supplier/OEM",
            "order_date": "When the order was placed (UTC, microseconds)",
            "po_number": "Retailer PO number; one PO can have several lines and span days",
            "item": "Product name",
            "customer": "End customer's name (personal data; raw, hashed or null per ORDERSYNC_PII_MODE)",
            "supplier": "Supplier / OEM name",
            "status": "Current status as last seen (processing, backordered, shipped, in_transit, delivered, cancelled, or anything new the API sends)",
            "customer_email": "End customer's email (personal data; raw, hashed or null per ORDERSYNC_PII_MODE)",
            "tracking_number": "Carrier tracking number; null until shipped",
            "tracking_url": "Carrier tracking URL; null until shipped",
            "carrier": "Carrier name; null until shipped",
            "delivery_date": "When the line was delivered (converted to UTC); null until delivered",
            "delivery_utc_offset": "The local UTC offset delivery_date was reported with, e.g. -08:00",
            "order_day": "UTC day of order_date: the Dagster partition the line belongs to",
            "fetched_at": "When this version of the line was fetched from the API (UTC)",
            "extra_fields": "JSON object of fields the API sent that the reference does not list; null if none. "
                            "With ORDERSYNC_PII_MODE hash or drop only their names are kept, each value replaced "
                            "by its type, e.g. {\"customer_phone\": \"<withheld str>\"}",
        },
    ),
    "order_status_rejects": (
        "Records the API sent that break the contract (missing id, unparseable date, wrong type, wrong day): "
        "kept with the reason and raw JSON instead of being dropped.",
        {"order_day": "Day requested from by-date (null for refresh look-ups)",
         "order_status_id": "The record's order_status_id, if it had a usable one", "reason": "Why it was rejected",
         "raw_json": "The record exactly as received; with ORDERSYNC_PII_MODE hash or drop, customer and "
                     "customer_email are hashed/null as in order_statuses and the values of unlisted fields, "
                     "nested objects/arrays and non-object records are replaced by their type (<withheld TYPE>)",
         "source": "Endpoint that returned it", "fetched_at": "When the record was fetched (UTC)"},
    ),
    "order_status_loads": (
        "One row per loaded day: what the API reported and what was stored (feeds the row-count check).",
        {"order_day": "The UTC order day loaded (the partition)", "api_total": "meta.total the API reported for the day",
         "rows_stored": "Rows written to order_statuses",
         "rejects": "Records of the day written to order_status_rejects instead",
         "duplicates_dropped": "Extra copies of an order_status_id among the day's records (the last copy is kept)",
         "pages_fetched": "by-date pages requested for the day, over all passes",
         "extra_field_names": "Names of fields the API sent that the reference does not list",
         "fetched_at": "When the day was fetched (UTC)",
         "paging_passes": "Times the day was read: more than 1 when results shifted while paging",
         "paging_duplicates": "Lines the API returned twice while paging (stored once)",
         "api_total_consistent": "False when the API's total never matched the lines it returned"},
    ),
    "vanished_lines": (
        "Lines the API stopped returning: a by-date read of the line's day no longer had it (the daily job "
        "re-reads the day of every open line a PO or supplier-order look-up no longer returns). Such lines "
        "(orders deleted or merged upstream) are out of order_statuses and so out of open_orders, the backlog "
        "and stuck_lines; here they keep their last known values. A line that comes back, under its day or "
        "another, leaves this table and returns to order_statuses.",
        {"last_seen_at": "Latest observation that still returned the line (API clock)",
         "vanished_at": "First observation at which its day was read without it (API clock)",
         "status": "Status when last seen"},
    ),
    "order_status_history": (
        "Each line's statuses as observed: one row per status spell, with when it was first and last seen. "
        "The API only shows the current status; this table is the only record of how a line moved.",
        {"status": "The status the line showed during this spell",
         "first_seen_at": "First observation that showed this status, on the API's clock (its HTTP Date header, "
                           "to the second; the fetch time if it sent none). The change itself happened after the "
                           "line's previous observation and no later than this",
         "last_seen_at": "Latest observation that still showed it (same clock)",
         "is_latest": "True on the line's most recent status spell"},
    ),
}


# What a column means in every table that has it, unless the table's own comments say otherwise: the
# columns marts copy from order_statuses keep its descriptions.
SHARED_COLUMN_COMMENTS = {**COMMENTS["order_statuses"][1], "order_week": "Monday of the UTC week of order_date"}


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


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the raw tables and their comments, unless they are all there already, every column commented
    (the cheap, usual case; a file from an older version gets the comments added since)."""
    tables = f"({', '.join(sql_string(name) for name in COMMENTS)})"
    present, uncommented = conn.execute(
        f"SELECT (SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name IN {tables}), "
        f"(SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'main' AND table_name IN {tables} "
        "AND comment IS NULL)"
    ).fetchall()[0]
    if present == len(COMMENTS) and not uncommented:
        return
    with transaction(conn):
        conn.execute(SCHEMA_SQL)
        apply_comments(conn, COMMENTS)


def apply_comments(conn: duckdb.DuckDBPyConnection, comments: dict[str, tuple[str, dict[str, str]]]) -> None:
    """COMMENT ON the tables and every column, so DBeaver, `duckdb_columns()` and the Dagster UI's column
    table explain them: the table's own comment for a column, else SHARED_COLUMN_COMMENTS'."""
    for table, (table_comment, columns) in comments.items():
        conn.execute(f"COMMENT ON TABLE {table} IS {sql_string(table_comment)}")
        unknown = set(columns)
        for (column,) in conn.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND "
                                      "table_name = ? ORDER BY column_index", [table]).fetchall():
            unknown.discard(column)
            comment = columns.get(column) or SHARED_COLUMN_COMMENTS.get(column)
            if comment is None:
                raise ValueError(f"column {table}.{column} has no comment: describe it beside the SQL that creates it")
            conn.execute(f"COMMENT ON COLUMN {table}.{column} IS {sql_string(comment)}")
        if unknown:
            raise ValueError(f"comments for columns {table} does not have: {sorted(unknown)}")


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolling back on any error (KeyboardInterrupt included)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
