"""`ordersync bench` runs end to end on a tiny range and reports what the README's benchmark table needs.
It times nothing here: figures come from the command on a quiet machine, never from assertions in tests."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_reports_the_raw_limit_the_pipeline_dagsters_floor_and_our_own_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERSYNC_", "DAGSTER_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "ordersync_pipeline.cli", "bench", "--days", "2", "--orders-per-day", "20",
         "--repeat", "1", "--skip", "naive", "marts", "daily", "dlt", "fixed"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {line.split("  ")[0]: line for line in completed.stdout.splitlines()}
    for row in ("raw fetch, sequential", "pipeline (one Dagster run, whole process)",
                "Dagster's floor (no-op asset, same run shape)"):
        assert row in rows, completed.stdout
    assert "own work = pipeline - Dagster's floor: " in completed.stdout and "load average" in completed.stdout
    # Each round measures everything once, so that what is compared was measured close in time.
    assert "round 1: raw limit " in completed.stdout and "round 2" not in completed.stdout
    assert "publish " in completed.stdout
