"""Analysts and the pipeline never block each other, through a real webserver + daemon."""

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.cli import INSTANCE_CONFIG
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.conftest import SIM_FIRST_DAY, SIM_NOW, duckdb_env
from ordersync_pipeline_tests.dagster_deployment import running_deployment
from ordersync_pipeline_tests.truth import assert_table_equals_truth

pytestmark = pytest.mark.slow


def ask(analyst: subprocess.Popen, command: str) -> dict:
    analyst.stdin.write(command + "\n")
    analyst.stdin.flush()
    return json.loads(analyst.stdout.readline())


def test_a_session_held_open_through_a_backfill_and_daily_runs_blocks_nothing_and_sees_one_snapshot(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    database = str(tmp_path / "ordersync.duckdb")
    published = duckdb_env(database)["ORDERSYNC_DUCKDB_PATH"]
    retailer = SimulatedRetailer(seed=31, orders_per_day=30)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY) as sim:
        env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": sim.base_url,
               **duckdb_env(database), "ORDERSYNC_LOOKBACK_DAYS": "2"}
        with running_deployment(home, env) as ui:
            ui.launch_partition_run("daily_order_sync", "2025-11-01", {"test": "first"})
            assert [r["status"] for r in ui.wait_for_runs(("test", "first"), count=1, timeout=300)] == ["SUCCESS"]

            analyst = subprocess.Popen([sys.executable, "-m", "ordersync_pipeline_tests.analyst_session", published],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                seen_first = json.loads(analyst.stdout.readline())
                assert seen_first["last_day"] == "2025-11-01" and seen_first["days"] == 3

                # A 30-day backfill from the Materialize dialog; the daemon's sensor then publishes.
                backfill = ui.launch_backfill({"partitionsByAssets": [{
                    "assetKey": {"path": ["order_statuses"]},
                    "partitions": {"range": {"start": "2025-11-02", "end": "2025-12-01"}}}]})
                assert ui.wait_for_backfill(backfill, timeout=300) == "COMPLETED_SUCCESS"
                (backfill_run,) = ui.backfill_runs(backfill)
                publish = ui.wait_for_runs(("ordersync/published_after_run", backfill_run["runId"]), 1, timeout=240)
                assert [r["status"] for r in publish] == ["SUCCESS"]
                assert ask(analyst, "ask") == seen_first

                for day in ("2025-12-02", "2025-12-03", "2025-12-04"):
                    ui.launch_partition_run("daily_order_sync", day, {"test": "daily"})
                daily = ui.wait_for_runs(("test", "daily"), count=3, timeout=600)
                assert [r["status"] for r in daily] == ["SUCCESS"] * 3
                finished = ask(analyst, "finish")
            finally:
                analyst.kill()
                analyst.wait(timeout=30)
        # The first daily run re-read its 2 lookback days too.
        truth = sim.records_for_days(dt.date(2025, 10, 30), dt.date(2025, 12, 4))

    # The held session answered from the snapshot it opened, consistently, even reading a result it held.
    assert {k: finished[k] for k in seen_first} == seen_first and finished["rows_read"] == seen_first["lines"]
    # A new session sees the latest snapshot, equal to the simulator's truth, and when it was published.
    assert_table_equals_truth(published, truth)
    with duckdb.connect(published, read_only=True) as conn:
        (as_of_day, first_day, last_day), = conn.execute(
            "SELECT as_of_day, first_order_day, last_order_day FROM published_snapshot").fetchall()
    assert (as_of_day, first_day, last_day) == (dt.date(2025, 12, 4), dt.date(2025, 10, 30), dt.date(2025, 12, 4))
    # No run waited on a lock: none logged a wait, none failed.
    instance = dg.DagsterInstance.from_config(str(home))
    runs = instance.get_runs()
    assert len(runs) == 1 + 1 + 1 + 3 and all(run.is_success for run in runs)
    waits = [entry.user_message for run in runs for entry in instance.all_logs(run.run_id)
             if "DuckDB file locked" in entry.user_message]
    assert waits == []
    assert sorted(os.listdir(os.path.dirname(published))) == ["ordersync.duckdb"]
