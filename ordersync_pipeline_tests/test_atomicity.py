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
from ordersync_pipeline.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline_tests.truth import assert_table_equals_truth
from ordersync_pipeline_tests.writer_to_kill import VERSIONS

pytestmark = pytest.mark.slow


def test_kill_9_mid_write_leaves_each_day_fully_old_or_fully_new(tmp_path):
    database = str(tmp_path / "killed.duckdb")
    rng = random.Random(3)
    seen_versions = set()
    for attempt in range(8):
        writer = subprocess.Popen([sys.executable, "-m", "ordersync_pipeline_tests.writer_to_kill", database],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.4))
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
        result = dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03", raise_on_error=False)
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
    assert_table_equals_truth(database, truth)  # the day as it was before the blocked run

    assert dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03").success  # retry works
    assert_table_equals_truth(database, simulator.records_for_day(dt.date(2025, 12, 3)))
