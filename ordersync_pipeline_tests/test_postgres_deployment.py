"""The production instance configuration: Postgres-backed storage, queued runs, pool limits, a UI backfill."""

import datetime as dt
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import psycopg2
import pytest

from ordersync_pipeline.cli import INSTANCE_CONFIG
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, duckdb_env
from ordersync_pipeline_tests.dagster_deployment import (
    duckdb_step_intervals,
    free_port,
    held_for_the_pool,
    max_overlap,
    overlapping_steps,
    queued_behind_another,
    running_deployment,
)
from ordersync_pipeline_tests.truth import assert_table_equals_truth

pytestmark = pytest.mark.slow
POSTGRES_INSTANCE_CONFIG = INSTANCE_CONFIG.with_name("dagster-postgres.yaml")


def postgres_bin_dir() -> Path | None:
    """Where initdb, pg_ctl and createdb live (Debian keeps them off PATH, under /usr/lib/postgresql)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates and shutil.which("initdb"):
        candidates = [str(Path(shutil.which("initdb")).resolve())]
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (the binaries refuse to run as root: use `postgres`)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed; .ci/run installs them with apt-get")
    root = Path(tempfile.mkdtemp(prefix="ordersync-pg-"))
    root.chmod(0o777)
    port = free_port()
    as_server_user = ["su", "postgres", "-s", "/bin/bash", "-c"] if os.geteuid() == 0 else ["bash", "-c"]

    def run(command: str) -> None:
        subprocess.run([*as_server_user, command], check=True, capture_output=True, timeout=120)

    run(f"{bin_dir}/initdb -D {root}/data -U postgres -A trust")
    run(f"{bin_dir}/pg_ctl -D {root}/data -w -l {root}/server.log "
        f"-o '-p {port} -k {root} -c listen_addresses=127.0.0.1 -c timezone=UTC' start")
    try:
        run(f"{bin_dir}/createdb -h 127.0.0.1 -p {port} -U postgres dagster")
        yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USER": "postgres",
               "DAGSTER_PG_PASSWORD": "unused-with-trust-auth", "DAGSTER_PG_DB": "dagster"}
    finally:
        run(f"{bin_dir}/pg_ctl -D {root}/data -m fast stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(postgres, tmp_path_factory):
    """One webserver + daemon on the PostgreSQL-backed instance the product ships, with the simulator and the
    working file."""
    folder = tmp_path_factory.mktemp("postgres_deployment")
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copyfile(POSTGRES_INSTANCE_CONFIG, home / "dagster.yaml")
    database = str(folder / "ordersync.duckdb")
    with OrderSyncSimulator(SimulatedRetailer(seed=8, orders_per_day=20), clock=SimulatedClock(SIM_NOW),
                            first_day=SIM_FIRST_DAY) as sim:
        env = {**os.environ, **postgres, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": sim.base_url,
               **duckdb_env(database), "ORDERSYNC_LOOKBACK_DAYS": "1"}
        with running_deployment(home, env) as ui:
            yield SimpleNamespace(ui=ui, sim=sim, home=home, database=database)


@pytest.mark.timeout(1500)  # a PostgreSQL server, a deployment and 5 runs; far longer while the machine is loaded
def test_a_ui_backfill_and_separate_runs_on_postgres_keep_duckdb_steps_apart_under_the_shipped_pool_limit(
        deployment, postgres, monkeypatch):
    """The shipped limit on the PostgreSQL instance: daily runs of 3 days, fewer than the instance runs at once
    (the first launched alone, so that the pool has its limit; then two more), launched with a UI backfill of the
    5 days before (one run, created at the backfill daemon's next pass), then the sensor's publishing run: the
    daemon starts them one at a time (pool granularity "run"), so not one overlap of their DuckDB steps and no
    lock wait, and every run, event and file where the production configuration puts it."""
    ui, sim = deployment.ui, deployment.sim
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    first, backfill_last, last = dt.date(2025, 11, 20), dt.date(2025, 11, 24), dt.date(2025, 11, 27)
    separate_runs = (last - backfill_last).days
    days = [str(backfill_last + dt.timedelta(days=offset)) for offset in range(1, separate_runs + 1)]
    # Dagster sets a pool's limit in storage at the run queue's first pass that sees one of its runs, and does
    # not apply it in that same pass, so the test lets the first run go alone (operations.md, "Concurrency").
    ui.wait_until_dequeued(ui.launch_partition_run("daily_order_sync", days[0], {"test": "pool-limit"}), timeout=120)
    backfill = ui.launch_backfill({"partitionsByAssets": [{
        "assetKey": {"path": ["order_statuses"]},
        "partitions": {"range": {"start": str(first), "end": str(backfill_last)}}}]})
    for day in days[1:]:
        ui.launch_partition_run("daily_order_sync", day, {"test": "pool-limit"})
    (backfill_run,) = ui.wait_for_backfill_runs(backfill, count=1, timeout=600)
    daily_runs = ui.wait_for_runs(("test", "pool-limit"), count=separate_runs, timeout=900)
    # The daemon's sensor publishes after the backfill's run (marts rebuilt, checks re-run).
    published = ui.wait_for_runs(("ordersync/published_after_run", backfill_run["runId"]), count=1, timeout=240)
    runs = [backfill_run, *daily_runs, *published]
    assert [r["status"] for r in runs] == ["SUCCESS"] * len(runs)
    assert max_overlap(runs) == 1, "runs of the pool were in progress together"
    assert len(queued_behind_another(runs)) >= separate_runs - 1, runs  # launched together, run one by one
    assert held_for_the_pool(deployment.home, [r["runId"] for r in runs]), "the daemon never held a run for the pool"
    for path in duckdb_env(deployment.database).values():  # the working file and the published one
        assert_table_equals_truth(path, sim.records_for_days(first, last))

    instance = dg.DagsterInstance.from_config(str(deployment.home))
    run_ids = [r["runId"] for r in runs]
    steps = duckdb_step_intervals(instance, run_ids)
    assert len(steps) >= len(runs) * 4
    assert overlapping_steps(steps) == []
    lock_waits = [e.user_message for run_id in run_ids for e in instance.all_logs(run_id)
                  if "DuckDB file locked" in e.user_message]
    assert lock_waits == []  # the pool, not DuckDB's lock, kept them apart

    with psycopg2.connect(host="127.0.0.1", port=postgres["DAGSTER_PG_PORT"], user="postgres", dbname="dagster") as pg:
        with pg.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (run_ids,))
            stored_runs = dict(cursor.fetchall())
            cursor.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                           "AND asset_key = '[\"order_statuses\"]' AND run_id = %s", (backfill_run["runId"],))
            materializations = cursor.fetchone()[0]
    assert stored_runs.keys() == set(run_ids) and set(stored_runs.values()) == {"SUCCESS"}
    assert materializations == 5  # one per partition of the range
    assert not list(deployment.home.rglob("runs.db")), "run storage must be Postgres, not SQLite under DAGSTER_HOME"
    # The daemon marks the backfill at its next pass (every 30 s): long done by now; still its one run.
    assert ui.wait_for_backfill(backfill, timeout=120) == "COMPLETED_SUCCESS"
    assert [r["runId"] for r in ui.backfill_runs(backfill)] == [backfill_run["runId"]]
