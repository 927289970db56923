"""The README's Dagster shell commands, run as a user runs them, against the embedded simulator."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline_tests.support import README, ROOT, duckdb_env
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
    assert "order_statuses_checks - STEP_SUCCESS" in completed.stderr  # the checks ran too
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


# -- dg (dagster-dg-cli): the README's commands, as it gives them, run in the repository root -------------

def readme_dg_command(start: str) -> list[str]:
    """The README's `dg` command line beginning with `start`, split as a shell would (no quoting used)."""
    (line,) = [line for line in README.splitlines() if line.startswith(start)]
    return line.split("#", 1)[0].split()


def dg(args: list[str], simulator, database: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": simulator.base_url,
           **duckdb_env(database)}
    env.pop("DAGSTER_HOME", None)
    completed = subprocess.run([str(Path(sys.executable).parent / "dg"), *args[1:]], capture_output=True, text=True,
                               timeout=300, env=env, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    # dg is today's CLI: none of the superseded commands' (or any other) framework warnings.
    assert "Warning" not in completed.stdout + completed.stderr, completed.stderr[-3000:]
    assert SIMULATOR_API_KEY not in completed.stdout + completed.stderr
    return completed


def test_dg_check_defs_and_list_defs(simulator, database):
    dg(readme_dg_command("dg check defs"), simulator, database)
    listed = dg([*readme_dg_command("dg list defs"), "--json"], simulator, database).stdout
    definitions = json.loads(listed)
    assert {"order_statuses", "analyst_database"} <= {asset["asset_key"] for asset in definitions["assets"]}
    assert {"daily_order_sync", "publish_analyst_database"} <= {job["name"] for job in definitions["jobs"]}


def test_dg_launch_of_a_partition_range_as_the_readme_gives_it(simulator, database):
    command = readme_dg_command("dg launch --assets order_statuses --partition-range")
    first, last = command[-1].split("...")
    completed = dg(command, simulator, database)
    assert_table_equals_truth(database, simulator.records_for_days(dt.date.fromisoformat(first),
                                                                   dt.date.fromisoformat(last)))
    assert "order_statuses_checks - STEP_SUCCESS" in completed.stderr  # the checks ran too


def test_dg_launch_of_the_daily_job_as_the_readme_gives_it(simulator, database):
    command = readme_dg_command("dg launch --job daily_order_sync --partition")
    dg(command, simulator, database)
    with duckdb.connect(database, read_only=True) as conn:
        last_day = conn.execute("SELECT max(order_day) FROM order_statuses").fetchall()[0][0]
    assert last_day == dt.date.fromisoformat(command[-1])
