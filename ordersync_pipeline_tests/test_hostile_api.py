"""A hostile API: paging drift, 429s, 5xx, dropped connections, truncated bodies, slow answers."""

import datetime as dt
import time

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.assets.order_statuses import order_status_checks, order_statuses
from ordersync_pipeline.api.client import OrderSyncClient
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, Faults, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, range_tags
from ordersync_pipeline_tests.truth import assert_table_equals_truth, stored_rows

FIRST, LAST = dt.date(2025, 12, 1), dt.date(2025, 12, 5)


def hostile_simulator(faults: Faults) -> OrderSyncSimulator:
    return OrderSyncSimulator(SimulatedRetailer(seed=5, orders_per_day=150), clock=SimulatedClock(SIM_NOW),
                              first_day=SIM_FIRST_DAY, faults=faults)


def patient_resources(sim: OrderSyncSimulator, database: str) -> dict:
    # Short backoff so the test is quick; many attempts so a heavy fault mix cannot exhaust them.
    return {"ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=sim.base_url, max_attempts=15,
                                           backoff_initial_seconds=0.01, backoff_max_seconds=0.1),
            "warehouse": OrderSyncWarehouse(database=database)}


def test_plain_page_by_page_reading_really_is_wrong_under_drift():
    """The failure the client guards against, shown with a naive single pass."""
    with hostile_simulator(Faults(paging_drift=1.0, paging_drift_events_per_day=1)) as sim, \
            OrderSyncClient(SIMULATOR_API_KEY, sim.base_url) as client:
        seen, page = [], 1
        while True:
            result = client.get_order_statuses_page(FIRST, FIRST, page)
            seen += [r["order_status_id"] for r in result.decode_records()]
            if not result.meta.has_more:
                break
            page += 1
        truth = {r["order_status_id"] for r in sim.records_for_day(FIRST)}
    assert len(seen) != len(set(seen)), "expected a line returned twice"
    assert truth - set(seen), "expected a line never returned"


def test_drift_while_paging_still_stores_every_line_exactly_once(database):
    with hostile_simulator(Faults(paging_drift=1.0, paging_drift_events_per_day=2)) as sim:
        result = dg.materialize([order_statuses, *order_status_checks], resources=patient_resources(sim, database),
                                tags=range_tags(str(FIRST), str(LAST)))
        assert result.success
        assert all(sim.drift_events[FIRST + dt.timedelta(days=i)] == 2 for i in range(5))
        assert_table_equals_truth(database, sim.records_for_days(FIRST, LAST))
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["order_status_id_is_unique"] and checks["row_count_matches_api_total"]
    with duckdb.connect(database, read_only=True) as conn:
        passes = [p for (p,) in conn.execute("SELECT paging_passes FROM order_status_loads").fetchall()]
    assert min(passes) >= 2
    metadata = result.get_asset_materialization_events()[-1].materialization.metadata
    assert metadata["paging_duplicates"].value > 0  # the API did return lines twice; each is stored once


@pytest.mark.slow
def test_a_backfill_under_a_heavy_fault_mix_equals_the_truth(database, tmp_path):
    timings = {}
    for name, faults, path in (("clean", Faults(), str(tmp_path / "clean.duckdb")), ("heavy", Faults.heavy(), database)):
        with hostile_simulator(faults) as sim:
            started = time.monotonic()
            result = dg.materialize([order_statuses], resources=patient_resources(sim, path),
                                    tags=range_tags(str(FIRST), str(LAST)))
            timings[name] = time.monotonic() - started
            assert result.success
            assert_table_equals_truth(path, sim.records_for_days(FIRST, LAST))
            metadata = result.get_asset_materialization_events()[-1].materialization.metadata
            if name == "heavy":
                assert metadata["api_retries"].value > 0 and sum(sim.drift_events.values()) > 0
                print(f"heavy faults: {metadata['api_requests'].value} requests, {metadata['api_retries'].value} "
                      f"retries, {metadata['paging_duplicates'].value} lines returned twice while paging, "
                      f"{metadata['rows_written'].value} lines stored of {len(sim.records_for_days(FIRST, LAST))}")
    print(f"backfill of 5 days: clean {timings['clean']:.2f} s, heavy faults {timings['heavy']:.2f} s")


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The failed step's error with its causes: Dagster wraps the asset's own exception."""
    error = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error
    message = ""
    while error is not None:
        message += error.message
        error = error.cause
    return message


def test_drift_that_never_settles_fails_the_run_and_keeps_the_day_as_it_was(database):
    with hostile_simulator(Faults()) as sim:
        resources = patient_resources(sim, database)
        assert dg.materialize([order_statuses], resources=resources, partition_key=str(FIRST)).success
        before = stored_rows(database)
        with duckdb.connect(database, read_only=True) as conn:
            loads_before = conn.execute("SELECT * FROM order_status_loads").fetchall()
        sim.faults.paging_drift, sim.faults.paging_drift_events_per_day = 1.0, 1_000  # orders never stop arriving
        result = dg.materialize([order_statuses], resources=resources, partition_key=str(FIRST), raise_on_error=False)
        assert sim.drift_events[FIRST] > 6  # every pass of the re-run saw the day move
    assert not result.success
    message = failure_message(result)
    assert "OrderSyncPagingError" in message and "after 6 passes" in message and "Nothing was stored" in message
    assert stored_rows(database) == before
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT * FROM order_status_loads").fetchall() == loads_before


def test_an_api_total_that_is_always_wrong_fails_the_row_count_check(database):
    with hostile_simulator(Faults(total_offset=3)) as sim:
        result = dg.materialize([order_statuses, *order_status_checks], resources=patient_resources(sim, database),
                                tags=range_tags(str(FIRST), str(FIRST + dt.timedelta(days=1))), raise_on_error=False)
        assert_table_equals_truth(database, sim.records_for_days(FIRST, FIRST + dt.timedelta(days=1)))
    # The lines are stored (they are all the API returns) and flagged; the check is blocking, so the run fails
    # there and nothing downstream (marts, the analysts' file) would run.
    assert not result.success
    failed_steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed_steps == ["order_statuses_checks"]  # the step of order_statuses' six checks
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 6  # every check reported; only this blocking one failed
    assert [e.check_name for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR] == [
        "row_count_matches_api_total"]
    check = next(e for e in evaluations if e.check_name == "row_count_matches_api_total")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "2 of 2 loaded days differ" in check.description
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT DISTINCT api_total_consistent FROM order_status_loads").fetchall() == [(False,)]


def test_the_rate_budget_spaces_requests():
    with hostile_simulator(Faults()) as sim, OrderSyncClient(SIMULATOR_API_KEY, sim.base_url,
                                                             requests_per_second=40) as client:
        started = time.monotonic()
        for _ in range(11):
            client.get_order_statuses_page(FIRST, FIRST, 1)
        elapsed = time.monotonic() - started
    assert elapsed >= 10 / 40 * 0.95  # 11 requests at 40/s need at least 10 intervals


def test_bad_records_are_rejected_kept_and_warned_about_while_the_day_is_stored(database):
    with hostile_simulator(Faults(corrupt_every=50)) as sim:
        result = dg.materialize([order_statuses, *order_status_checks], resources=patient_resources(sim, database),
                                tags=range_tags(str(FIRST), str(LAST)))
        assert result.success  # a bad record never fails the day
        truth = sim.records_for_days(FIRST, LAST)
    corrupted = {r["order_status_id"] for day in range(5)
                 for i, r in enumerate(sim.records_for_day(FIRST + dt.timedelta(days=day))) if i % 50 == 0}
    assert_table_equals_truth(database, [r for r in truth if r["order_status_id"] not in corrupted])
    with duckdb.connect(database, read_only=True) as conn:
        rejects = conn.execute("SELECT order_status_id, reason, raw_json FROM order_status_rejects").fetchall()
    assert {r[0] for r in rejects} == corrupted
    assert all("unparseable order_date 31/12/2025 9:00" in reason and '"31/12/2025 9:00"' in raw for _, reason, raw in rejects)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["no_rejected_records"].passed
    assert checks["no_rejected_records"].severity == dg.AssetCheckSeverity.WARN
    assert checks["row_count_matches_api_total"].passed  # stored + rejected account for meta.total
    metadata = result.get_asset_materialization_events()[-1].materialization.metadata
    assert metadata["rejects"].value == len(corrupted)
