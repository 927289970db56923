"""A day is fully old or fully new, whatever kills the writer; a held file fails clearly and loses nothing."""

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.storage.warehouse import WarehouseLockedError
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline_tests.truth import assert_table_equals_truth
from ordersync_pipeline_tests.writer_to_kill import VERSIONS

pytestmark = pytest.mark.slow


def test_kill_9_mid_write_leaves_each_day_fully_old_or_fully_new(tmp_path):
    database = str(tmp_path / "killed.duckdb")
    rng = random.Random(3)
    seen_versions = set()
    # At least 8 kills, and on until each version was the committed one at some kill: where a kill lands is the
    # machine's timing (the writer goes on writing while the test reads its lines), and 8 kills on a loaded machine
    # once all found version 2 committed. Bounded: 24 kills at most.
    for attempt in range(24):
        if attempt >= 8 and seen_versions == {1, 2}:
            break
        writer = subprocess.Popen([sys.executable, "-m", "ordersync_pipeline_tests.writer_to_kill", database],
                                  stdout=subprocess.PIPE, text=True)
        try:
            # Let 1-4 writes commit (so both versions are the committed one in some attempts), then kill
            # somewhere in the next write, whatever the machine's speed.
            for _ in range(rng.randint(1, 4)):
                assert writer.stdout.readline().startswith("wrote ")
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=30)
        with duckdb.connect(database) as conn:  # opening replays or discards the write-ahead log
            stored = conn.execute(
                "SELECT count(*), count(DISTINCT fetched_at), min(fetched_at), count(DISTINCT status), min(status) "
                "FROM order_statuses").fetchall()[0]
            loads = conn.execute("SELECT rows_stored, fetched_at FROM order_status_loads").fetchall()
        count, distinct_fetches, fetched_at, distinct_statuses, status = stored
        assert distinct_fetches == 1 and distinct_statuses == 1, f"attempt {attempt}: a mix of versions: {stored}"
        assert (count, status) == VERSIONS[fetched_at.hour], f"attempt {attempt}: a partial day: {stored}"
        assert loads == [(count, fetched_at)]
        seen_versions.add(fetched_at.hour)
    assert seen_versions == {1, 2}  # the kills landed while either version was being written


def test_a_run_blocked_by_an_analyst_fails_clearly_after_a_bounded_wait_and_loses_nothing(simulator, database):
    resources = {"ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=simulator.base_url),
                 "warehouse": OrderSyncWarehouse(database=database, lock_timeout_seconds=2)}
    assert dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03").success
    truth = simulator.records_for_day(dt.date(2025, 12, 3))
    analyst = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); time.sleep(60)", database], stdout=subprocess.PIPE, text=True)
    try:
        assert analyst.stdout.readline().strip() == "open"
        simulator.clock.advance(days=3)
        started = time.monotonic()
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03", raise_on_error=False,
                                instance=instance)
        waited = time.monotonic() - started
    finally:
        analyst.kill()
        analyst.wait(timeout=30)
    assert not result.success and waited < 30
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error, message = failure.step_failure_data.error, ""
    while error is not None:  # Dagster wraps the asset's own exception; read the whole chain
        message += error.message
        error = error.cause
    assert f"PID {analyst.pid}" in message and "waited 2 s" in message and "nothing was written" in message
    # While it waited, the run's log said who held the file (a long path once cut the PID off).
    waits = {e.user_message for e in instance.all_logs(result.run_id) if "DuckDB file locked" in e.user_message}
    assert waits == {f"DuckDB file locked by {os.path.realpath(sys.executable)} (PID {analyst.pid}), waiting"}, waits
    assert_table_equals_truth(database, truth)  # the day as it was before the blocked run

    assert dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03").success  # retry works
    assert_table_equals_truth(database, simulator.records_for_day(dt.date(2025, 12, 3)))


def hold_file(database: str, seconds: float) -> subprocess.Popen:
    """Another process that opens the DuckDB file (as an analyst's session does) and closes it after `seconds`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); time.sleep(float(sys.argv[2])); c.close(); print('closed', time.time(), flush=True); "
         "time.sleep(60)", database, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    return holder


def test_a_held_file_is_waited_for_as_long_as_configured_then_fails(database):
    duckdb.connect(database).close()  # the file exists, as it does once the pipeline has run
    holder = hold_file(database, 60)
    try:
        started = time.monotonic()
        with pytest.raises(WarehouseLockedError, match=f"PID {holder.pid}"):
            with OrderSyncWarehouse(database=database, lock_timeout_seconds=2).connect():
                pass
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert 1.9 <= waited < 15, f"failed after {waited:.1f} s, configured to wait 2 s"


def test_a_file_released_during_the_wait_is_then_written(database):
    duckdb.connect(database).close()
    holder = hold_file(database, 1.5)
    try:
        started = time.monotonic()
        with OrderSyncWarehouse(database=database, lock_timeout_seconds=30).connect() as conn:
            connected_at = time.time()
            waited = time.monotonic() - started
            conn.execute("CREATE TABLE written_after_the_wait AS SELECT 1 AS x")
        said, closed_at = holder.stdout.readline().split()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # It waited for the holder (an event, not a duration: a loaded machine stretches both sides), then wrote.
    assert said == "closed" and connected_at >= float(closed_at), "connected while the holder still had the file"
    assert waited < 15, f"connected {waited:.1f} s after the holder closed the file"
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT x FROM written_after_the_wait").fetchall() == [(1,)]
