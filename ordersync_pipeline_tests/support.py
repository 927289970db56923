"""What many test modules share: the simulator's fixed clock, the settings a Dagster process gets, the
retailers of the many-retailer tests, searches for leaked values, and the README's analyst queries.
Test modules import from here (and from the other helper modules: truth, lines, dagster_deployment, browser,
object_store), never from each other or from conftest."""

import datetime as dt
import re
from pathlib import Path

import dagster as dg
import duckdb

from ordersync_pipeline.definitions import build_definitions
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.simulator.retailer import SimulatedRetailer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# The simulator's "now" in most tests: early morning of 2025-12-10 UTC, so 2025-12-09 is complete.
SIM_NOW = dt.datetime(2025, 12, 10, 6, 0, tzinfo=dt.timezone.utc)
SIM_FIRST_DAY = dt.date(2025, 10, 1)

# Where the older DuckDB clients' virtual environments are kept between runs (built once, from PyPI).
CLIENT_VENVS = Path.home() / ".cache" / "ordersync-pipeline-tests"


def duckdb_env(database: str) -> dict[str, str]:
    """Settings for a Dagster process: runs write `database`; analysts' file in a folder beside it."""
    return {"ORDERSYNC_WORKING_DUCKDB_PATH": database,
            "ORDERSYNC_DUCKDB_PATH": str(Path(database).parent / "analysts" / "ordersync.duckdb")}


def range_tags(first: str, last: str) -> dict[str, str]:
    """Tags that make one in-process run cover a range of partitions (single-run backfill)."""
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def run_daily(resources, day: str, instance: dg.DagsterInstance | None = None):
    """One in-process run of daily_order_sync for `day`, failures returned rather than raised."""
    job = build_definitions(resources).resolve_job_def("daily_order_sync")
    return job.execute_in_process(partition_key=day, instance=instance or dg.DagsterInstance.ephemeral(),
                                  raise_on_error=False)


def analyst_queries() -> list[str]:
    """The SQL blocks of the README's "For analysts" section, in order."""
    section = README.split("## For analysts", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


# Many retailers in one deployment.
RETAILERS = ("acme", "globex", "initech")


def retailer_key(retailer: str) -> str:
    return f"pk_test_{retailer}_key"


def overlapping_retailers(orders_per_day: int = 10) -> dict[str, SimulatedRetailer]:
    """API key -> retailer: different seeds, one id seed, so PO numbers and supplier order ids collide."""
    return {retailer_key(r): SimulatedRetailer(seed=31 + i, orders_per_day=orders_per_day, id_seed=5)
            for i, r in enumerate(RETAILERS)}


def retailer_resources(tmp_path: Path, base_url: str, keys: dict[str, str] | None = None) -> dict[str, dict]:
    keys = keys or {}
    return {r: {"ordersync": OrderSyncResource(api_key=keys.get(r, retailer_key(r)), base_url=base_url),
                "warehouse": OrderSyncWarehouse(database=str(tmp_path / r / "working.duckdb"),
                                                analyst_database=str(tmp_path / r / "ordersync.duckdb"))}
            for r in RETAILERS}


# Searching for values that must not be anywhere (keys, personal data).

def files_containing(folder: Path, needle: str) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file() and needle.encode() in path.read_bytes()]


def duckdb_columns_containing(database: str, needles: list[str]) -> dict[str, list[str]]:
    """needle -> the table.column names holding it, searching every column's values as text (the file's
    pages may be compressed, so its raw bytes are not enough)."""
    found: dict[str, list[str]] = {}
    with duckdb.connect(database, read_only=True) as conn:
        columns = conn.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal AND schema_name = 'main'").fetchall()
        for t, c in columns:
            for (needle,) in conn.execute(f'SELECT DISTINCT n FROM "{t}", (SELECT unnest(?::VARCHAR[]) AS n) '
                                          f'WHERE contains(CAST("{c}" AS VARCHAR), n)', [needles]).fetchall():
                found.setdefault(needle, []).append(f"{t}.{c}")
    return found
