"""Every ORDERSYNC_* setting the README documents takes effect, and a bad value stops everything at load."""

import datetime as dt
import json
import os
import re
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline import sync
from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.definitions import build_definitions
from ordersync_pipeline.orchestration.resources import resources_from_env
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, Faults, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, duckdb_env, range_tags

FIRST, LAST = dt.date(2025, 12, 1), dt.date(2025, 12, 3)


@pytest.fixture
def slow_api():
    """Days of about 4 pages, each request answered after 50 ms, so concurrent requests overlap."""
    with OrderSyncSimulator(SimulatedRetailer(seed=5, orders_per_day=150), clock=SimulatedClock(SIM_NOW),
                            first_day=SIM_FIRST_DAY, faults=Faults(latency_seconds=0.05)) as sim:
        yield sim


@pytest.fixture
def env_for(monkeypatch, database):
    """Point the environment at a simulator and the test's database, plus the given settings."""
    def setter(sim: OrderSyncSimulator, **settings: str) -> None:
        for name, value in {"ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": sim.base_url,
                            **duckdb_env(database), **settings}.items():
            monkeypatch.setenv(name, value)
    return setter


@pytest.mark.parametrize("pages, days, expected_in_flight", [("1", "1", 1), ("3", "1", 3), ("1", "3", 3)])
def test_concurrent_pages_and_days_in_flight_set_how_many_requests_are_in_flight(
        slow_api, env_for, pages, days, expected_in_flight):
    env_for(slow_api, ORDERSYNC_MAX_CONCURRENT_PAGES=pages, ORDERSYNC_DAYS_IN_FLIGHT=days)
    assert dg.materialize([order_statuses], resources=resources_from_env(), tags=range_tags(str(FIRST), str(LAST))).success
    # Never more than the settings allow; and with more allowed, requests did overlap. (Exactly the limit is
    # likely but not certain on a loaded machine: the threads' requests need not all be in flight at once.)
    assert slow_api.peak_in_flight <= expected_in_flight
    assert slow_api.peak_in_flight >= min(expected_in_flight, 2)


def test_the_request_rate_caps_all_threads_of_a_run_together(slow_api, env_for):
    rate = 25  # requests 40 ms apart, each answered after 50 ms: several are in flight at once
    env_for(slow_api, ORDERSYNC_REQUESTS_PER_SECOND=str(rate), ORDERSYNC_MAX_CONCURRENT_PAGES="4",
            ORDERSYNC_DAYS_IN_FLIGHT="3")
    assert dg.materialize([order_statuses], resources=resources_from_env(), tags=range_tags(str(FIRST), str(LAST))).success
    arrivals = sorted(slow_api.arrivals)
    assert len(arrivals) >= 12 and slow_api.peak_in_flight >= 2  # several threads were fetching at once
    # The run's requests span at least 70% of their number of budget intervals, and any 10 consecutive ones at
    # least half of 9: margins for a loaded machine delaying when the server notes an arrival. A budget per
    # thread would let the 4-12 threads send them in a quarter of that or less.
    whole = arrivals[-1] - arrivals[0]
    assert whole >= 0.7 * (len(arrivals) - 1) / rate, f"{len(arrivals)} requests within {whole:.3f} s at {rate}/s"
    window = 10
    spans = [arrivals[i + window - 1] - arrivals[i] for i in range(len(arrivals) - window + 1)]
    assert min(spans) >= 0.5 * (window - 1) / rate, f"{window} requests within {min(spans):.3f} s at {rate}/s"


@pytest.mark.parametrize("per_transaction, days_kept", [("2", 2), ("7", 0)])
def test_days_per_transaction_is_how_many_whole_days_commit_together(
        simulator, env_for, monkeypatch, database, per_transaction, days_kept):
    """The API fails on the third day of a range: the days already committed stay, the rest roll back."""
    fetch_day_load = sync.fetch_day_load

    def failing_on_the_third_day(client, day, **options):
        if day == FIRST + dt.timedelta(days=2):
            raise RuntimeError("the API went away")
        return fetch_day_load(client, day, **options)

    monkeypatch.setattr(sync, "fetch_day_load", failing_on_the_third_day)
    env_for(simulator, ORDERSYNC_DAYS_PER_TRANSACTION=per_transaction, ORDERSYNC_DAYS_IN_FLIGHT="1")
    result = dg.materialize([order_statuses], resources=resources_from_env(), raise_on_error=False,
                            tags=range_tags(str(FIRST), str(FIRST + dt.timedelta(days=3))))
    assert not result.success
    with duckdb.connect(database, read_only=True) as conn:
        stored = [d for (d,) in conn.execute("SELECT DISTINCT order_day FROM order_statuses ORDER BY 1").fetchall()]
    assert stored == [FIRST + dt.timedelta(days=i) for i in range(days_kept)]


def test_lookback_pii_mode_and_memory_limit_take_effect_in_a_daily_run(simulator, env_for, database):
    env_for(simulator, ORDERSYNC_LOOKBACK_DAYS="3", ORDERSYNC_PII_MODE="hash", ORDERSYNC_DUCKDB_MEMORY_LIMIT="100MB",
            ORDERSYNC_PII_HASH_KEY="settings-test-key")
    resources = resources_from_env()
    defs = build_definitions(resources)
    assert defs.resolve_job_def("daily_order_sync").execute_in_process(partition_key="2025-12-09").success
    with duckdb.connect(database, read_only=True) as conn:
        days = [d for (d,) in conn.execute("SELECT DISTINCT order_day FROM order_statuses ORDER BY 1").fetchall()]
        refresh = conn.execute("SELECT lookback_days, days_refetched FROM order_status_refreshes").fetchall()
        customers = conn.execute("SELECT DISTINCT customer FROM order_statuses").fetchall()
    assert days == [dt.date(2025, 12, 6), dt.date(2025, 12, 7), dt.date(2025, 12, 8), dt.date(2025, 12, 9)]
    assert refresh == [(3, 3)]
    names = {r["customer"] for r in simulator.records_for_days(dt.date(2025, 12, 6), dt.date(2025, 12, 9))}
    assert all(len(name) == 64 and name not in names for (name,) in customers)
    with resources["warehouse"].connect() as conn:
        assert conn.execute("SELECT current_setting('memory_limit')").fetchall() == [("95.3 MiB",)]  # 100 MB


def run_with_settings(command: list[str], tmp_path, **settings: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_DUCKDB_PATH": str(tmp_path / "o.duckdb"),
           **settings}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)


@pytest.mark.slow
def test_the_start_date_sets_the_first_partition(tmp_path):
    completed = run_with_settings(
        ["-c", "from ordersync_pipeline.definitions import defs; "
               "print(defs.resolve_job_def('daily_order_sync').partitions_def.get_first_partition_key())"],
        tmp_path, ORDERSYNC_START_DATE="2025-10-01")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "2025-10-01"


def test_the_store_memory_limit_is_a_setting_never_above_the_duckdb_limit():
    from ordersync_pipeline.settings import Settings

    assert Settings.from_env({}).store_memory_limit == "32MB"
    assert Settings.from_env({"ORDERSYNC_STORE_MEMORY_LIMIT": "64MB"}).store_memory_limit == "64MB"
    assert Settings.from_env({"ORDERSYNC_DUCKDB_MEMORY_LIMIT": "16MB"}).store_memory_limit == "16MB"
    with pytest.raises(ValueError, match="ORDERSYNC_STORE_MEMORY_LIMIT must not be above ORDERSYNC_DUCKDB_MEMORY_LIMIT"):
        Settings.from_env({"ORDERSYNC_STORE_MEMORY_LIMIT": "1GB"})
    with pytest.raises(ValueError, match="ORDERSYNC_STORE_MEMORY_LIMIT must be a memory size"):
        Settings.from_env({"ORDERSYNC_STORE_MEMORY_LIMIT": "lots"})


def test_duckdb_judges_settings_as_values_only_and_a_forked_process_judges_its_own():
    """The DuckDB settings are checked on one in-memory database per process, by SET: a quote in a value stays
    part of the value, and a process forked after a check (the inherited connection is not its own) still checks."""
    from ordersync_pipeline.settings import Settings

    value = "1GB'; SET threads = 1; --"
    with pytest.raises(ValueError, match=re.escape(f"ORDERSYNC_DUCKDB_MEMORY_LIMIT must be a memory size such as "
                                                   f"256MB or 2GB, got {value!r} (Parser Error: Unknown unit")):
        Settings.from_env({"ORDERSYNC_DUCKDB_MEMORY_LIMIT": value})
    assert Settings.from_env({}).duckdb_memory_limit == "256MB"
    child = os.fork()
    if child == 0:  # report through the exit status only: nothing of pytest's may run here
        try:
            ok = Settings.from_env({"ORDERSYNC_STORE_MEMORY_LIMIT": "48MB"}).store_memory_limit == "48MB"
            with pytest.raises(ValueError, match="ORDERSYNC_STORE_MEMORY_LIMIT must be a memory size"):
                Settings.from_env({"ORDERSYNC_STORE_MEMORY_LIMIT": "forked"})
        except BaseException:  # noqa: BLE001
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


BAD_SETTINGS = [
    ("ORDERSYNC_MAX_CONCURRENT_PAGES", "0"),
    ("ORDERSYNC_DAYS_IN_FLIGHT", "four"),
    ("ORDERSYNC_DAYS_PER_TRANSACTION", "0"),
    ("ORDERSYNC_DUCKDB_MEMORY_LIMIT", "lots"),
    ("ORDERSYNC_REQUESTS_PER_SECOND", "0"),
    ("ORDERSYNC_START_DATE", "2025-13-01"),
    ("ORDERSYNC_LOOKBACK_DAYS", "-1"),
    ("ORDERSYNC_PII_MODE", "encrypt"),
    ("ORDERSYNC_DUCKDB_STORAGE_VERSION", "v0.0.0-nope"),
    ("ORDERSYNC_STUCK_AFTER_DAYS", "0"),
    ("ORDERSYNC_DELIVERY_TARGET_DAYS", "a week"),
    ("ORDERSYNC_FRESHNESS_HOURS", "0"),
    ("ORDERSYNC_FRESHNESS_SENSOR_SECONDS", "soon"),
    ("ORDERSYNC_ALERT_SENSOR_SECONDS", "0"),
    ("ORDERSYNC_PUBLISH_SENSOR_SECONDS", "0"),
    ("ORDERSYNC_ALERT_SMTP_PORT", "smtp"),
    ("ORDERSYNC_ALERT_SMTP_STARTTLS", "yes"),
    ("ORDERSYNC_ALERT_SMTP_HOST", "smtp.example.com"),  # without _FROM and _TO
]


def assert_stopped(error: str, folder, name: str, value: str) -> None:
    """The error's last line names the setting and its value, and nothing was written in `folder`."""
    last_line = error.strip().splitlines()[-1]
    assert name in last_line and repr(value) in last_line, error[-2000:]
    assert list(folder.iterdir()) == []  # no DuckDB file, nor anything else


def assert_stopped_at_load(completed: subprocess.CompletedProcess, tmp_path, name: str, value: str) -> None:
    assert completed.returncode != 0
    assert_stopped(completed.stderr, tmp_path, name, value)


@pytest.fixture(scope="module")
def loads_with_bad_settings(tmp_path_factory):
    """Each BAD_SETTINGS pair given alone to a fresh import of the definitions, in one separate process (see
    load_with_each_setting.py), each from an empty folder of its own: (what the load did, that folder)."""
    root = tmp_path_factory.mktemp("bad_settings")
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_DUCKDB_PATH": "o.duckdb"}
    env.pop("DAGSTER_HOME", None)
    completed = subprocess.run([sys.executable, "-m", "ordersync_pipeline_tests.load_with_each_setting", str(root)],
                               input=json.dumps(BAD_SETTINGS), capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {tuple(pair): (load, root / str(i))
            for i, (pair, load) in enumerate(zip(BAD_SETTINGS, json.loads(completed.stdout)))}


@pytest.mark.slow
@pytest.mark.parametrize("name, value", BAD_SETTINGS)
def test_a_bad_setting_stops_the_definitions_from_loading(loads_with_bad_settings, name, value):
    load, folder = loads_with_bad_settings[(name, value)]
    assert not load["loaded"]
    assert_stopped(load["error"], folder, name, value)


@pytest.mark.slow
def test_a_bad_lookback_stops_even_a_command_that_does_not_use_it_before_anything_is_written(tmp_path):
    """The refresh reads the lookback; materializing order_statuses alone used to ignore a bad one."""
    completed = run_with_settings(
        ["-m", "dagster", "asset", "materialize", "-m", "ordersync_pipeline.definitions", "--select", "order_statuses",
         "--partition", "2025-12-03"], tmp_path, ORDERSYNC_BASE_URL="http://127.0.0.1:9", ORDERSYNC_LOOKBACK_DAYS="-1")
    assert_stopped_at_load(completed, tmp_path, "ORDERSYNC_LOOKBACK_DAYS", "-1")
