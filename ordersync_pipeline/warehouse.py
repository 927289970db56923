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

from ordersync_pipeline.normalise import ORDER_STATUS_SCHEMA, REJECT_SCHEMA

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


def replace_days(conn: duckdb.DuckDBPyConnection, loads: list[DayLoad]) -> None:
    """Swap whole days' rows, rejects and load records, and record status history, in one transaction.

    Several days per transaction keep a long backfill from paying DuckDB's per-statement and per-commit
    cost once per day; each day is still either fully old or fully new.
    """
    days = [load.day for load in loads]
    if len(set(days)) != len(days):
        raise ValueError(f"replace_days got the same day twice: {days}")
    rows = ArrowStream(pl.concat([load.rows.select(list(ORDER_STATUS_SCHEMA)) for load in loads]))
    observed = ArrowStream(pl.concat([_observations(load.rows, load.observed_at) for load in loads]))
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
        conn.execute(f"DELETE FROM order_statuses WHERE {in_days}")
        conn.execute("INSERT INTO order_statuses BY NAME SELECT * FROM rows")
        conn.execute(f"DELETE FROM order_status_rejects WHERE {in_days} AND source = 'by-date'")
        conn.execute("INSERT INTO order_status_rejects BY NAME SELECT * FROM rejects")
        conn.execute(f"DELETE FROM order_status_loads WHERE {in_days}")
        conn.execute("INSERT INTO order_status_loads BY NAME SELECT * FROM day_loads")
        _record_history(conn, observed, days=days)


def _observations(rows: pl.DataFrame, observed_at: dt.datetime | None) -> pl.DataFrame:
    """What history needs of stored rows: id, day, status and when observed (the fetch time if unknown)."""
    when = pl.lit(observed_at).cast(rows.schema["fetched_at"]) if observed_at is not None else pl.col("fetched_at")
    return rows.select("order_status_id", "order_day", "status", when.alias("observed_at"))


def _date_list(days: list[dt.date]) -> str:
    return ", ".join(f"DATE '{day.isoformat()}'" for day in days)


def apply_refreshed_statuses(
    conn: duckdb.DuckDBPyConnection, rows: pl.DataFrame, rejects: pl.DataFrame, observed_at: dt.datetime | None = None
) -> int:
    """Overwrite the lines a look-up returned (matched by order_status_id); return how many were updated.

    Only lines already stored are updated: a line of a day not loaded yet arrives with that day's load.
    `observed_at`: the API's clock at the look-up, recorded in history (default: the rows' fetched_at).
    """
    rows = ArrowStream(rows.select(list(ORDER_STATUS_SCHEMA)))
    rejects = ArrowStream(rejects.select(list(REJECT_SCHEMA)).with_columns(pl.lit("by-po-numbers").alias("source")))
    assignments = ", ".join(f"{name} = r.{name}" for name in ORDER_STATUS_SCHEMA if name != "order_status_id")
    with transaction(conn):
        updated = conn.execute(
            f"UPDATE order_statuses AS t SET {assignments} FROM rows AS r WHERE t.order_status_id = r.order_status_id"
        ).fetchall()[0][0]
        # Rejects of look-ups belong to no day: keep only the latest refresh's.
        conn.execute("DELETE FROM order_status_rejects WHERE source = 'by-po-numbers'")
        conn.execute("INSERT INTO order_status_rejects BY NAME SELECT * FROM rejects")
        observed = ArrowStream(_observations(rows.frame, observed_at))
        stored = pl.DataFrame(conn.sql("SELECT * FROM observed SEMI JOIN order_statuses USING (order_status_id)"))
        _record_history(conn, ArrowStream(stored))
    return int(updated)


def _record_history(conn: duckdb.DuckDBPyConnection, observed: ArrowStream, days: list[dt.date] | None = None) -> None:
    """Extend each observed line's current status spell, or close it and open a new one if its status changed.

    `observed`: order_status_id, order_day, status, observed_at.
    `days`: all rows are of these order_days, so only their history is scanned (zone maps skip the rest).
    """
    latest = "h.is_latest"
    if days:
        latest += f" AND h.order_day BETWEEN DATE '{min(days)}' AND DATE '{max(days)}'"
    conn.execute(f"""
        UPDATE order_status_history AS h SET last_seen_at = greatest(h.last_seen_at, o.observed_at)
        FROM observed AS o
        WHERE {latest} AND h.order_status_id = o.order_status_id AND h.status IS NOT DISTINCT FROM o.status
    """)
    conn.execute(f"""
        UPDATE order_status_history AS h SET is_latest = false
        FROM observed AS o
        WHERE {latest} AND h.order_status_id = o.order_status_id AND h.status IS DISTINCT FROM o.status
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
