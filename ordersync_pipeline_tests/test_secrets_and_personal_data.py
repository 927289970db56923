"""The API key never reaches logs, run metadata, Dagster's storage, errors or DuckDB; PII is configurable."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.resources import OrderSyncResource, OrderSyncWarehouse, resources_from_env
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.conftest import SIM_FIRST_DAY, SIM_NOW

SECRET = "pk_live_S3CRET_k3y_that_must_never_leak"
WRONG = "pk_live_WR0NG_k3y_that_must_never_leak"


def files_containing(folder: Path, needle: str) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file() and needle.encode() in path.read_bytes()]


def duckdb_values_containing(database: str, needle: str) -> list[str]:
    with duckdb.connect(database, read_only=True) as conn:
        columns = conn.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE data_type = 'VARCHAR' AND NOT internal AND schema_name = 'main'").fetchall()
        return [f"{t}.{c}" for t, c in columns
                if conn.execute(f"SELECT count(*) FROM {t} WHERE {c} LIKE ?", [f"%{needle}%"]).fetchall()[0][0]]


@pytest.mark.slow
def test_the_key_leaks_nowhere_after_a_real_run_and_a_failed_one(tmp_path):
    home, database = tmp_path / "dagster_home", str(tmp_path / "ordersync.duckdb")
    home.mkdir()
    retailer = SimulatedRetailer(seed=3, orders_per_day=40)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY, api_key=SECRET) as sim:
        outputs = []
        for key, should_succeed in ((SECRET, True), (WRONG, False)):
            env = {**os.environ, "DAGSTER_HOME": str(home), "ORDERSYNC_API_KEY": key,
                   "ORDERSYNC_BASE_URL": sim.base_url, "ORDERSYNC_DUCKDB_PATH": database}
            completed = subprocess.run(
                [sys.executable, "-m", "dagster", "job", "execute", "-m", "ordersync_pipeline.definitions",
                 "-j", "daily_order_sync", "--tags", '{"dagster/partition": "2025-12-09"}'],
                capture_output=True, text=True, timeout=300, env=env)
            assert (completed.returncode == 0) == should_succeed, completed.stderr[-2000:]
            outputs.append(completed.stdout + completed.stderr)
    assert "OrderSync refused the API key (HTTP 401" in outputs[1]  # the failure is clear...
    for secret in (SECRET, WRONG):  # ...and neither key is anywhere
        assert all(secret not in output for output in outputs)
        assert files_containing(home, secret) == []
        assert secret.encode() not in Path(database).read_bytes()
        assert duckdb_values_containing(database, secret) == []
    assert any(home.rglob("*.db")), "expected Dagster's event storage under DAGSTER_HOME"
    instance_runs = dg.DagsterInstance.from_config(str(home)).get_runs()
    assert len(instance_runs) == 2
    for run in instance_runs:
        assert SECRET not in str(run.run_config) and WRONG not in str(run.run_config)


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_customer_names_and_emails_can_be_hashed_or_not_stored(simulator, database, mode):
    resources = {"ordersync": OrderSyncResource(api_key=simulator.api_key, base_url=simulator.base_url),
                 "warehouse": OrderSyncWarehouse(database=database, pii_mode=mode)}
    assert dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03").success
    truth = simulator.records_for_day(dt.date(2025, 12, 3))
    with duckdb.connect(database, read_only=True) as conn:
        stored = conn.execute("SELECT customer, customer_email FROM order_statuses").fetchall()
    assert len(stored) == len(truth)
    raw_values = {r["customer"] for r in truth} | {r["customer_email"] for r in truth}
    assert not raw_values & {value for row in stored for value in row}
    if mode == "drop":
        assert set(stored) == {(None, None)}
    else:
        assert all(len(name) == len(email) == 64 for name, email in stored)


def test_an_unknown_pii_mode_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("ORDERSYNC_PII_MODE", "encrypt")
    with pytest.raises(ValueError, match="ORDERSYNC_PII_MODE must be one of raw, hash, drop"):
        resources_from_env()
