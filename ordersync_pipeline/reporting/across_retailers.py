"""Comparing retailers: one DuckDB session over every retailer's published file, with a `retailer` column.

Each retailer's analysts' file is separate (ORDERSYNC_RETAILERS), so a comparison ATTACHes each file read-only
and unions its tables. DuckDB keeps views in a file but not the ATTACHes they read from (a fresh session
fails with 'schema "acme" does not exist'), so a ready-made view file is not possible; instead this builds
the SQL that a session runs first (`duckdb -init all_retailers.sql`), defining TEMP views of the same names
as the tables, over every retailer. Read-only ATTACHes never block publishing (it replaces files by rename).
"""

from ordersync_pipeline.settings import Settings, retailers_from_env
from ordersync_pipeline.storage.schema import sql_identifier, sql_string

# The tables analysts compare most; any other table of the published files can be added.
COMPARED_TABLES = ("order_statuses", "delivery_lead_times", "open_orders", "open_order_backlog", "stuck_lines",
                   "supplier_scorecard", "carrier_scorecard", "published_snapshot")


def across_retailers_sql(published_by_retailer: dict[str, str], tables: tuple[str, ...] = COMPARED_TABLES) -> str:
    """SQL that attaches each retailer's file read-only (as the retailer's name) and defines, for each table,
    a TEMP view of every retailer's rows with a `retailer` column first. Names are quoted: ORDERSYNC_RETAILERS
    allows names that are SQL keywords or start with a digit (`order`, `1acme`)."""
    attaches = [f"ATTACH IF NOT EXISTS {sql_string(path)} AS {sql_identifier(retailer)} (READ_ONLY);"
                for retailer, path in published_by_retailer.items()]
    views = [f"CREATE OR REPLACE TEMP VIEW {table} AS\n" + "\nUNION ALL BY NAME\n".join(
                 f"SELECT {sql_string(retailer)} AS retailer, * FROM {sql_identifier(retailer)}.main.{table}"
                 for retailer in published_by_retailer)
             + ";" for table in tables]
    return "\n".join(attaches) + "\n\n" + "\n\n".join(views) + "\n"


def published_files_from_env() -> dict[str, str]:
    """retailer -> the analysts' file the pipeline publishes for it, from ORDERSYNC_RETAILERS and ORDERSYNC_DUCKDB_PATH."""
    retailers = retailers_from_env()
    if not retailers:
        raise ValueError("ORDERSYNC_RETAILERS is not set: there is one retailer, nothing to compare. Set it to the "
                         "retailer names the pipeline runs for (e.g. acme,globex).")
    return {retailer: Settings.from_env(retailer=retailer).analyst_database for retailer in retailers}
