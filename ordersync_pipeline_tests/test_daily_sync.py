"""The daily operating loop against the simulator's moving truth: statuses, history and marts."""

import datetime as dt
import shutil
import statistics
from pathlib import Path

import duckdb
import pytest

from ordersync_pipeline.definitions import build_definitions
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, duckdb_env, range_tags
from ordersync_pipeline_tests.truth import assert_table_equals_truth, expected_row, quantile

pytestmark = pytest.mark.slow

LOOKBACK = 7  # shorter than the default, so lines older than the window exist in a small test


def messy_simulator() -> OrderSyncSimulator:
    """The shared simulator's data, but 1 line in 10 sent with a sloppy status spelling (" Delivered ",
    "CANCELLED", ...) and some delivered "before" they were ordered, as real feeds do."""
    retailer = SimulatedRetailer(seed=11, orders_per_day=60, messy_every=10)
    return OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY)


@pytest.fixture
def simulator():
    with messy_simulator() as sim:
        yield sim


def status_of(record: dict) -> str:
    """The status as the README defines it for open/delivered: case and surrounding spaces ignored."""
    return record["status"].strip().lower()


def run_daily(defs, day: dt.date, **options):
    result = defs.resolve_job_def("daily_order_sync").execute_in_process(
        run_config={"ops": {"order_status_refresh": {"config": {"lookback_days": LOOKBACK}}}}, **options,
        **({} if "tags" in options else {"partition_key": day.isoformat()}),
    )
    assert result.success
    return result


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@pytest.fixture(scope="module")
def backfilled_files(tmp_path_factory):
    """The whole history backfilled in one run as of the simulator's now (2025-12-10 06:00 UTC), once for the
    module: a folder with the working file and the analysts' file, laid out as `database` and `published`."""
    folder = tmp_path_factory.mktemp("backfilled")
    database = str(folder / "ordersync.duckdb")
    with messy_simulator() as sim:
        defs = build_definitions({
            "ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=sim.base_url),
            "warehouse": OrderSyncWarehouse(database=database,
                                            analyst_database=duckdb_env(database)["ORDERSYNC_DUCKDB_PATH"])})
        run_daily(defs, None, tags=range_tags(str(SIM_FIRST_DAY), "2025-12-09"))
    return folder


@pytest.fixture
def loaded(backfilled_files, resources, database):
    """A copy of the backfilled files where this test's runs write (the simulator, like the one that served the
    backfill, starts at the same clock with the same data); the definitions to run."""
    shutil.copytree(backfilled_files, Path(database).parent, dirs_exist_ok=True)
    return build_definitions(resources)


def test_after_each_daily_run_every_line_has_its_current_status_however_old(simulator, loaded, database):
    last_day = dt.date(2025, 12, 9)
    before = {r["order_status_id"]: r["status"] for r in simulator.records_for_days(SIM_FIRST_DAY, last_day)}
    for _ in range(3):
        simulator.clock.advance(days=1)
        last_day += dt.timedelta(days=1)
        result = run_daily(loaded, last_day)
        assert_table_equals_truth(database, simulator.records_for_days(SIM_FIRST_DAY, last_day))

    # The refresh mattered for lines far older than the lookback window, which by-date never re-read.
    window_start = last_day - dt.timedelta(days=LOOKBACK)
    moved_old = [r for r in simulator.records_for_days(SIM_FIRST_DAY, window_start - dt.timedelta(days=3))
                 if r["status"] != before[r["order_status_id"]]]
    assert moved_old, "the test needs old lines whose status changed"
    refresh = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["order_status_refresh"])
    assert refresh.materialization.metadata["older_open_lines_updated"].value > 0
    with duckdb.connect(database, read_only=True) as conn:
        log = conn.execute("SELECT as_of_day, days_refetched FROM order_status_refreshes ORDER BY refreshed_at").fetchall()
    assert log[-1] == (last_day, LOOKBACK)


def test_history_shows_each_transition_once(simulator, loaded, database):
    day = dt.date(2025, 12, 9)
    for _ in range(4):
        simulator.clock.advance(days=1)
        day += dt.timedelta(days=1)
        run_daily(loaded, day)
    with duckdb.connect(database, read_only=True) as conn:
        history = conn.sql("SELECT * FROM order_status_history ORDER BY order_status_id, first_seen_at").pl()
        current = dict(conn.execute("SELECT order_status_id, status FROM order_statuses").fetchall())
    spells: dict[str, list] = {}
    for row in history.iter_rows(named=True):
        spells.setdefault(row["order_status_id"], []).append(row)
    assert spells.keys() == current.keys()
    moved = 0
    for line_id, rows in spells.items():
        statuses = [r["status"] for r in rows]
        assert all(a != b for a, b in zip(statuses, statuses[1:])), f"{line_id} repeats a status spell: {statuses}"
        assert [r["is_latest"] for r in rows] == [False] * (len(rows) - 1) + [True]
        assert statuses[-1] == current[line_id]
        assert all(r["first_seen_at"] <= r["last_seen_at"] for r in rows)
        moved += len(rows) > 1
    assert moved > 50  # many lines moved during the four days

    # An older partition re-run later must not turn open_orders back in time.
    run_daily(loaded, dt.date(2025, 12, 9))
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT DISTINCT as_of_day FROM open_orders").fetchall() == [(day,)]


def test_marts_equal_figures_recomputed_from_the_simulators_truth(simulator, loaded, database):
    as_of = dt.date(2025, 12, 9)
    truth = [expected_row(r) for r in simulator.records_for_days(SIM_FIRST_DAY, as_of)]
    with duckdb.connect(database, read_only=True) as conn:
        lead = dict(conn.execute("SELECT order_status_id, lead_time_days FROM delivery_lead_times").fetchall())
        open_rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT order_status_id, age_days, age_bucket, as_of_day FROM open_orders").fetchall()}
        summary = {(s, st, b): n for s, st, b, n in conn.execute(
            "SELECT supplier, status, age_bucket, lines FROM open_order_summary").fetchall()}
        lead_summary = {(s, c, w): (n, p50, mx, mean, p90, p95) for s, c, w, n, p50, mx, mean, p90, p95 in conn.execute(
            "SELECT supplier, carrier, order_week, deliveries, p50_days, max_days, mean_days, p90_days, p95_days "
            "FROM delivery_lead_time_summary").fetchall()}

    # The sloppy spellings and the impossible deliveries are really in the data the marts were built from.
    assert {" Delivered ", "CANCELLED"} <= {r["status"] for r in truth}
    backwards = [r for r in truth if status_of(r) == "delivered" and r["delivery_date"] < r["order_date"]]
    assert backwards, "the test needs lines delivered before they were ordered"
    delivered = {r["order_status_id"]: (r["delivery_date"] - r["order_date"]).total_seconds() / 86400
                 for r in truth if status_of(r) == "delivered" and r["delivery_date"] >= r["order_date"]}
    assert any(r["status"] == " Delivered " and r["order_status_id"] in delivered for r in truth)
    assert lead.keys() == delivered.keys()
    assert all(abs(lead[k] - delivered[k]) < 1e-6 for k in delivered)

    def bucket(age):
        return next(label for label, high in (("0-2", 2), ("3-7", 7), ("8-14", 14), ("15-30", 30)) if age <= high) \
            if age <= 30 else "31+"

    expected_open = {r["order_status_id"]: ((as_of - r["order_day"]).days, bucket((as_of - r["order_day"]).days), as_of)
                     for r in truth if status_of(r) not in ("delivered", "cancelled")}
    assert open_rows == expected_open
    assert any(r["status"] == "on_hold" for r in truth if r["order_status_id"] in expected_open)  # kept, not dropped
    assert any(r["status"] == "PROCESSING" for r in truth if r["order_status_id"] in expected_open)

    expected_summary: dict = {}
    for r in truth:
        if r["order_status_id"] in expected_open:
            # One group per status whatever its spelling (vocabulary.status_key_sql): "PROCESSING" is processing.
            key = (r["supplier"], status_of(r), expected_open[r["order_status_id"]][1])
            expected_summary[key] = expected_summary.get(key, 0) + 1
    assert summary == expected_summary

    # Every group of the lead-time summary, recomputed by hand.
    group: dict = {}
    for r in truth:
        if r["order_status_id"] in delivered:
            week = r["order_date"].date() - dt.timedelta(days=r["order_date"].weekday())
            group.setdefault((r["supplier"], r["carrier"], week), []).append(delivered[r["order_status_id"]])
    assert lead_summary.keys() == group.keys()
    for key, values in group.items():
        count, p50, longest, mean, p90, p95 = lead_summary[key]
        assert count == len(values) and abs(longest - max(values)) < 1e-6 and abs(p50 - statistics.median(values)) < 1e-6
        assert abs(mean - statistics.fmean(values)) < 1e-6
        assert abs(p90 - quantile(values, 0.9)) < 1e-6 and abs(p95 - quantile(values, 0.95)) < 1e-6
