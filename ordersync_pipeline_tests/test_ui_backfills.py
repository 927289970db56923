"""Backfills launched through the GraphQL API the Dagster UI uses, run by a real webserver and daemon, while an
analyst keeps a session open on the published file: analysts and the pipeline never block each other."""

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
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, duckdb_env
from ordersync_pipeline_tests.dagster_deployment import (
    duckdb_step_intervals,
    held_for_the_pool,
    max_overlap,
    overlapping_steps,
    queued_behind_another,
    running_deployment,
)
from ordersync_pipeline_tests.truth import assert_table_equals_truth

pytestmark = pytest.mark.slow


def days(first: dt.date, count: int) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


# Separate runs of daily_order_sync launched at once: fewer than the instance runs at a time (4), so without the
# pool all would be in progress together; with it each waits in the queue for the one before. (30, then 5, runs
# proved nothing 3 do not: the test only ever asks whether runs of the pool overlap.)
SEPARATE_RUNS = 3


def ask(analyst: subprocess.Popen, command: str) -> dict:
    analyst.stdin.write(command + "\n")
    analyst.stdin.flush()
    return json.loads(analyst.stdout.readline())


@pytest.mark.timeout(1800)  # minutes on a quiet 2-core machine; far longer while it is loaded
def test_ui_backfill_and_separate_runs_complete_without_lock_failures_while_an_analyst_stays(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")  # the pool limit the product ships
    database = str(tmp_path / "ordersync.duckdb")
    published = duckdb_env(database)["ORDERSYNC_DUCKDB_PATH"]
    retailer = SimulatedRetailer(seed=21, orders_per_day=25)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY) as sim:
        env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": sim.base_url,
               **duckdb_env(database), "ORDERSYNC_LOOKBACK_DAYS": "2"}
        with running_deployment(home, env) as ui:
            # 1. An asset backfill of a week: one run (single-run backfill policy).
            week = ui.launch_backfill({"partitionsByAssets": [{
                "assetKey": {"path": ["order_statuses"]},
                "partitions": {"range": {"start": "2025-11-01", "end": "2025-11-07"}}}]})
            (week_run,) = ui.wait_for_backfill_runs(week, count=1, timeout=300)
            assert week_run["status"] == "SUCCESS"
            week_truth = sim.records_for_days(dt.date(2025, 11, 1), dt.date(2025, 11, 7))
            assert_table_equals_truth(database, week_truth)
            # The daemon's sensor then publishes the analysts' file (checks again, marts, analyst_database).
            publish = ui.wait_for_runs(("ordersync/published_after_run", week_run["runId"]), 1, timeout=240)
            assert [r["status"] for r in publish] == ["SUCCESS"]
            assert_table_equals_truth(published, week_truth)

            # 2. An analyst opens the published file, starts a transaction and a long query, and stays.
            analyst = subprocess.Popen([sys.executable, "-m", "ordersync_pipeline_tests.analyst_session", published],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                seen_first = json.loads(analyst.stdout.readline())
                assert (seen_first["last_day"], seen_first["days"]) == ("2025-11-07", 7)

                # 3. Days launched as separate runs of daily_order_sync (what the UI's partition launcher, or
                # schedule catch-up, does): launched together, all writing one working file, all publishing.
                for day in days(dt.date(2025, 11, 8), SEPARATE_RUNS):
                    ui.launch_partition_run("daily_order_sync", day, {"test": "separate-runs"})
                runs = ui.wait_for_runs(("test", "separate-runs"), count=SEPARATE_RUNS, timeout=900)
                failed = [r["runId"] for r in runs if r["status"] != "SUCCESS"]
                assert not failed, f"{len(failed)} runs failed; logs in {home}"
                # The pool (granularity "run") kept them one at a time: each waited in the queue for the one before.
                assert max_overlap(runs) == 1, "runs of the pool were in progress together"
                assert len(queued_behind_another(runs)) == SEPARATE_RUNS - 1, runs
                assert held_for_the_pool(home, [r["runId"] for r in runs]), "the daemon never held a run for the pool"
                # The held session still answers from the snapshot it opened, consistently, even the rows of
                # the query it held open across every publish.
                assert ask(analyst, "ask") == seen_first
                finished = ask(analyst, "finish")
                assert {k: finished[k] for k in seen_first} == seen_first
                assert finished["rows_read"] == seen_first["lines"]
            finally:
                analyst.kill()
                analyst.wait(timeout=30)
            # Long marked by now (the daemon's pass comes every 30 s); still one run, the one above.
            assert ui.wait_for_backfill(week, timeout=120) == "COMPLETED_SUCCESS"
            assert [r["runId"] for r in ui.backfill_runs(week)] == [week_run["runId"]]
        # The runs are the code server's processes: their output (DuckDB's lock error, had one hit it) is in its log.
        processes_log = (home / "code_server.log").read_text() + (home / "daemon.log").read_text()
        assert "Could not set lock" not in processes_log
        last_day = dt.date(2025, 11, 7) + dt.timedelta(days=SEPARATE_RUNS)
        truth = sim.records_for_days(dt.date(2025, 11, 1), last_day)
        assert_table_equals_truth(database, truth)
        # A new session sees the latest snapshot, equal to the truth; nothing is left beside it.
        assert_table_equals_truth(published, truth)
        with duckdb.connect(published, read_only=True) as conn:
            assert conn.execute("SELECT first_order_day, last_order_day FROM published_snapshot").fetchall() == [
                (dt.date(2025, 11, 1), last_day)]
        assert os.listdir(os.path.dirname(published)) == ["ordersync.duckdb"]

        # Analysts never hold the working file, and the pool kept runs apart: no run waited on DuckDB's lock, and
        # no two runs' DuckDB steps overlapped in time.
        instance = dg.DagsterInstance.from_config(str(home))
        every_run = [week_run, *publish, *runs]
        assert max_overlap(every_run) == 1
        run_ids = [r["runId"] for r in every_run]
        lock_waits = [e.user_message for run_id in run_ids for e in instance.all_logs(run_id)
                      if "DuckDB file locked" in e.user_message]
        assert lock_waits == []
        steps = duckdb_step_intervals(instance, run_ids)
        assert len(steps) >= len(every_run) * 4  # the four assets of each run, at least
        assert overlapping_steps(steps) == []
        with duckdb.connect(database, read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM order_status_refreshes").fetchall()[0][0] == SEPARATE_RUNS
