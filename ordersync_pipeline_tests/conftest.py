"""Shared fixtures: an embedded simulator with a fixed clock, and resources pointed at it."""

import datetime as dt
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from filelock import FileLock

from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.storage.schema import ensure_schema
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, duckdb_env, range_tags


# Modules by their time in a whole run on three workers (December 2026, seconds: the browser 131, the UI backfill 71,
# PostgreSQL 81, freshness 108, object storage 103, then 65, 60, 56, 55, 42, 42, 37, 36, 35, 25, 18, 14, 14): longest
# first, except that the four longest are ordered so that the two that mostly wait (the browser module on the
# backfill daemon, the freshness module on its one-minute window) do not start side by side: they did, and their
# waits met and left a core idle for ~20 s (CPU idle from /proc/stat, two runs). The others, a few seconds each,
# keep their order after them. pytest-xdist's workers (pyproject's addopts) take modules in this order, so the last
# ones to start are short and the workers finish together: in collection order, one worker still ran a 50 s and
# an 81 s module while the other two had finished.
SLOWEST_FIRST = ("test_ui_in_browser.py", "test_ui_backfills.py", "test_postgres_deployment.py",
                 "test_freshness_and_alerts.py", "test_object_storage.py", "test_readme_and_cli.py",
                 "test_secrets_and_personal_data.py", "test_analyst_database.py", "test_retailers_deployment.py",
                 "test_dagster_commands.py", "test_daily_sync.py", "test_retailers.py",
                 "test_backlog_and_scorecards.py", "test_upstream_changes.py", "test_not_found.py",
                 "test_settings.py", "test_atomicity.py", "test_bench.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its order


@pytest.fixture
def simulator():
    retailer = SimulatedRetailer(seed=11, orders_per_day=60)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY) as sim:
        yield sim


@pytest.fixture
def conn(tmp_path):
    """A working file with the raw tables and nothing in them."""
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_schema(connection)
    yield connection
    connection.close()


@pytest.fixture
def database(tmp_path):
    """The working file the pipeline's runs write."""
    return str(tmp_path / "ordersync.duckdb")


@pytest.fixture
def published(tmp_path):
    """The file analysts open, published by analyst_database."""
    return duckdb_env(str(tmp_path / "ordersync.duckdb"))["ORDERSYNC_DUCKDB_PATH"]


@pytest.fixture
def resources(simulator, database, published):
    return {
        "ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=simulator.base_url),
        "warehouse": OrderSyncWarehouse(database=database, analyst_database=published),
    }


@pytest.fixture(scope="session")
def observed_history(tmp_path_factory, worker_id):
    """Files as a team has them after a backfill and a week of mornings: statuses observed moving day by day,
    a backlog over 8 days, stuck lines, transit brackets, backorders, sloppy status spellings.
    Returns (working file, published file, the Dagster instance the last morning's run recorded to). Built once per test
    session, whichever pytest-xdist worker asks first; the others wait for it and then only read it."""
    if worker_id == "master":  # not under xdist (-n 0)
        return _build_observed_history(tmp_path_factory.mktemp("history"))
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, shared by its workers
    folder = shared / "observed_history"
    with FileLock(str(shared / "observed_history.lock")):
        if not (folder / "built").exists():
            folder.mkdir(exist_ok=True)
            _build_observed_history(folder)
            (folder / "built").touch()
    return _observed_history_files(folder)


def _observed_history_files(folder: Path) -> tuple[str, str, dg.DagsterInstance]:
    working = str(folder / "ordersync.duckdb")
    return working, duckdb_env(working)["ORDERSYNC_DUCKDB_PATH"], dg.DagsterInstance.from_config(str(folder / "dagster_home"))


def _build_observed_history(folder: Path) -> tuple[str, str, dg.DagsterInstance]:
    from ordersync_pipeline.definitions import build_definitions

    (folder / "dagster_home").mkdir()
    working, published, instance = _observed_history_files(folder)
    first_day = HISTORY_FIRST_DAY
    retailer = SimulatedRetailer(seed=5, orders_per_day=40, messy_every=10)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=first_day - dt.timedelta(days=20)) as sim:
        defs = build_definitions({"ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=sim.base_url),
                                  "warehouse": OrderSyncWarehouse(database=working, analyst_database=published)})
        job = defs.resolve_job_def("daily_order_sync")
        day = SIM_NOW.date() - dt.timedelta(days=1)
        # Only the last morning is recorded where the tests read Dagster's records (the charts on its
        # materializations): a persistent SQLite instance costs ~4x an in-memory one per event, and a backfill
        # records two events per asset and day.
        with dg.DagsterInstance.ephemeral() as scratch:
            assert job.execute_in_process(tags=range_tags(str(first_day), str(day)), instance=scratch).success
            for morning in range(HISTORY_MORNINGS):  # the backlog and the stuck clock need mornings observed on time
                sim.clock.advance(days=1)
                day += dt.timedelta(days=1)
                recorded_to = instance if morning == HISTORY_MORNINGS - 1 else scratch
                assert job.execute_in_process(partition_key=str(day), instance=recorded_to).success
    return working, published, instance


HISTORY_FIRST_DAY = dt.date(2025, 10, 27)
HISTORY_MORNINGS = 7
