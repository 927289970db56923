"""Metadata people would rather look at than read: row counts, column schemas, markdown previews."""

from __future__ import annotations

import base64
import functools

import dagster as dg
import duckdb
import polars as pl

from ordersync_pipeline.storage.schema import COMMENTS, SCHEMA_SQL, apply_comments


def table_metadata(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, object]:
    """Row count and column schema (with the COMMENTs stored in the file) of a DuckDB table."""
    return {**table_figures(conn, table), "dagster/column_schema": column_schema(conn, table)}


def table_figures(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, object]:
    """Row count and name of a DuckDB table: what a materialization says about it besides its columns."""
    row_count = conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    return {"dagster/row_count": dg.MetadataValue.int(int(row_count)),
            "dagster/table_name": dg.MetadataValue.text(table)}


def column_schema(conn: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    """A DuckDB table's columns: name, type, nullability and the COMMENT stored in the file."""
    columns = conn.execute(
        "SELECT column_name, data_type, is_nullable, comment FROM duckdb_columns() "
        "WHERE table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, data_type, description=comment or None,
                           constraints=dg.TableColumnConstraints(nullable=bool(nullable)))
            for name, data_type, nullable, comment in columns
        ]
    )


@functools.cache
def raw_table_column_schema(table: str) -> dg.TableSchema:
    """The column schema of one of schema.py's raw tables, from its CREATE TABLE and COMMENTs run in an
    in-memory DuckDB, for an asset's definition: the same on every partition, it need not travel in each.
    Runs when the code location loads (~50 ms), so only this table's comments are applied."""
    with duckdb.connect() as conn:
        conn.execute(SCHEMA_SQL)
        apply_comments(conn, {table: COMMENTS[table]})
        return column_schema(conn, table)


def markdown_table(frame: pl.DataFrame, max_rows: int = 25) -> dg.MarkdownMetadataValue:
    """A frame as a markdown table (first rows only) for the asset's page in the UI."""
    shown = frame.head(max_rows)
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in shown.iter_rows())
    more = f"\n_{frame.height - max_rows} more rows in the table._" if frame.height > max_rows else ""
    return dg.MetadataValue.md(header + body + more)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value).replace("|", "\\|")


def image(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    """A PNG the asset's page shows as a picture: Dagster's UI renders Markdown images, data URIs included,
    so the chart travels inside the materialization event and needs no file server."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
