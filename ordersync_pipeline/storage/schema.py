"""The raw tables' schema and what every column means: created, migrated and commented in one place.

Knows no HTTP and no Dagster. `ensure_schema` makes a file (new, or from an older version) hold every raw table
with every column commented; `transaction` is the one BEGIN/COMMIT every writer uses. Writing the tables is
warehouse.py's; the marts' SQL sits beside their assets and uses `apply_comments` for their comments.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb


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
