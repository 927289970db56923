"""Backfills launched through the GraphQL API the Dagster UI uses, run by a real webserver and daemon, while an
analyst keeps a session open on the published file: analysts and the pipeline never block each other."""

import datetime as dt
import json
import os
import re
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
    max_overlap,
    overlapping_steps,
    pool_blocked_steps,
    running_deployment,
)
from ordersync_pipeline_tests.truth import assert_table_equals_truth

pytestmark = pytest.mark.slow


def days(first: dt.date, count: int) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


# Separate runs of daily_order_sync launched at once: more than the instance runs at a time (4), so runs
# queue, several are in flight, wait at the pool and publish one after another. 30 runs proved nothing 8 do not
# (each run meets the same 3 others), at four times the minutes; 5 still queue one behind the first four.
SEPARATE_RUNS = 5
RACE_BOUND = 4  # overlapping step pairs (or lock waits) the SQLite race below may cause


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
                # schedule catch-up, does): several in flight, all writing one working file, all publishing.
                for day in days(dt.date(2025, 11, 8), SEPARATE_RUNS):
                    ui.launch_partition_run("daily_order_sync", day, {"test": "separate-runs"})
                runs = ui.wait_for_runs(("test", "separate-runs"), count=SEPARATE_RUNS, timeout=900)
                failed = [r["runId"] for r in runs if r["status"] != "SUCCESS"]
                assert not failed, f"{len(failed)} runs failed; logs in {home}"
                assert max_overlap(runs) > 1, "expected several runs in flight at once"
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

        # Success alone would not show the pool at work (a run's lock wait could absorb the contention):
        # Dagster must have held steps back for the pool, and no two runs' DuckDB steps should overlap in time.
        instance = dg.DagsterInstance.from_config(str(home))
        run_ids = [r["runId"] for r in runs]
        assert pool_blocked_steps(instance, run_ids), "no step was ever held back by the pool"
        # Analysts never hold the working file: a run that waited on DuckDB's lock waited on another run's
        # process (the race below), never on the analyst's session or anything else.
        lock_waits = [e.user_message for run_id in run_ids for e in instance.all_logs(run_id)
                      if "DuckDB file locked" in e.user_message]
        run_pids = {e.dagster_event.pid for run in instance.get_runs() for e in instance.all_logs(run.run_id)
                    if e.dagster_event is not None}
        holders = [re.search(r"\(PID (\d+)\), waiting$", message) for message in lock_waits]
        assert all(holders) and {int(h[1]) for h in holders} <= run_pids, (lock_waits, analyst.pid)
        steps = duckdb_step_intervals(instance, run_ids)
        assert len(steps) >= SEPARATE_RUNS * 4  # the four assets of each run, at least
        overlapping = overlapping_steps(steps)
        with duckdb.connect(database, read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM order_status_refreshes").fetchall()[0][0] == SEPARATE_RUNS
    # Bounded: the race below overlapped 2 of 262 steps on a quiet machine, 7 pairs in 30 runs with the suite's
    # other worker busy, none in 7 runs of 8-10 separate runs, and with 5 runs in the suite on three workers 1
    # pair in one run of four, none in the others (December 2026). A pool limit of 10 instead of 1 gave 111
    # overlapping pairs and 35 lock waits with 8 runs, and with these 5 fails at "no step was ever held back by
    # the pool" above; the bound is absolute so a rare race in a few runs does not fail the suite.
    assert len(overlapping) <= RACE_BOUND, f"{len(overlapping)} overlaps of DuckDB steps of different runs: {overlapping[:3]}"
    assert len(set(lock_waits)) <= RACE_BOUND, lock_waits
    if overlapping or lock_waits:
        # Seen in 2 of 262 steps (November 2026), more often on a loaded machine: Dagster 1.13's SQL storage claims
        # a slot with SELECT ... FOR UPDATE SKIP LOCKED and an UPDATE by id alone, and SQLite ignores the row lock,
        # so two processes can claim the same free slot. The lock wait then absorbs the overlap (every assertion
        # above still holds).
        pytest.xfail(f"the pool let {len(overlapping)} pairs of DuckDB steps of different runs overlap (SQLite storage "
                     f"race): {overlapping[:2]}; {len(set(lock_waits))} lock waits: {lock_waits[:2]}")
