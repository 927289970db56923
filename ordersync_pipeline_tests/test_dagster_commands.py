"""The README's Dagster shell commands, run as a user runs them, against the embedded simulator."""

import datetime as dt
import os
import subprocess
import sys

import duckdb
import pytest

from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline_tests.conftest import duckdb_env
from ordersync_pipeline_tests.truth import assert_table_equals_truth

pytestmark = pytest.mark.slow


def dagster(args: list[str], simulator, database: str,
            python_options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": simulator.base_url,
           **duckdb_env(database)}
    env.pop("DAGSTER_HOME", None)
    completed = subprocess.run([sys.executable, *python_options, "-m", "dagster", *args], capture_output=True,
                               text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_partition_range_materialize_command(simulator, database):
    """The range and its checks run without importing pyarrow: it adds ~43 MB to a run's memory, and DuckDB
    imports it whenever a polars frame or a `.pl()` result crosses over (warehouse.ArrowStream says why)."""
    completed = dagster(["asset", "materialize", "-m", "ordersync_pipeline.definitions", "--select", "order_statuses",
                         "--partition-range", "2025-12-01...2025-12-07"], simulator, database, ("-X", "importtime"))
    assert_table_equals_truth(database, simulator.records_for_days(dt.date(2025, 12, 1), dt.date(2025, 12, 7)))
    assert "order_statuses_order_status_id_is_unique - STEP_SUCCESS" in completed.stderr  # the checks ran too
    assert_never_imported_pyarrow(completed)


def assert_never_imported_pyarrow(completed: subprocess.CompletedProcess) -> None:
    """Of a command run with `python -X importtime`."""
    imported = [line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines()
                if line.startswith("import time:")]
    assert "polars" in imported and "duckdb" in imported
    assert not [name for name in imported if name.startswith("pyarrow")]


def test_daily_job_command(simulator, database):
    completed = dagster(["job", "execute", "-m", "ordersync_pipeline.definitions", "-j", "daily_order_sync",
                         "--tags", '{"dagster/partition": "2025-12-09"}'], simulator, database, ("-X", "importtime"))
    with duckdb.connect(database, read_only=True) as conn:
        days = [d for (d,) in conn.execute("SELECT DISTINCT order_day FROM order_statuses ORDER BY 1").fetchall()]
        open_lines = conn.execute("SELECT count(*) FROM open_orders").fetchall()[0][0]
    assert days == [dt.date(2025, 11, 25) + dt.timedelta(days=i) for i in range(15)]  # D and 14 lookback days
    assert open_lines > 0
    assert SIMULATOR_API_KEY not in completed.stdout + completed.stderr
    assert_never_imported_pyarrow(completed)  # the refresh, marts and charts neither
