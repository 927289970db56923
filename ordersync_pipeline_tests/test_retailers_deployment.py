"""Several retailers through a real webserver + daemon: one run per retailer, in parallel, each failing alone."""

import datetime as dt
import os
import shutil
import threading

import dagster as dg
import pytest

from ordersync_pipeline.cli import INSTANCE_CONFIG
from ordersync_pipeline.simulator.server import OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW
from ordersync_pipeline_tests.dagster_deployment import running_deployment
from ordersync_pipeline_tests.support import RETAILERS, overlapping_retailers, retailer_key
from ordersync_pipeline_tests.support import duckdb_columns_containing, files_containing
from ordersync_pipeline_tests.dagster_deployment import duckdb_step_intervals
from ordersync_pipeline_tests.truth import assert_table_equals_truth

pytestmark = pytest.mark.slow

REVOKED = "pk_live_R3VOKED_k3y_of_initech_never_to_leak"


def error_chain(error) -> str:
    """A step failure's message with its causes (the user code's error is the cause of Dagster's)."""
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def meet_at_first_request(feeds: list) -> list[bool]:
    """Each feed's first by-date answer waits until every feed has been asked: if the retailers' steps could not
    run at the same time (one pool for all), the first would wait in vain and the step intervals would not
    overlap; if they can, they overlap for certain, however the runs' start-ups spread. The wait is bounded
    (10 min, for a loaded machine starting runs slowly); the returned list says whether everyone met."""
    asked = [threading.Event() for _ in feeds]
    met: list[bool] = []
    for feed, event in zip(feeds, asked):
        def answer(first, last, offset, limit, _serve=feed.served_page, _event=event):
            if not _event.is_set():
                _event.set()
                met.append(all(other.wait(timeout=600) for other in asked))
            return _serve(first, last, offset, limit)
        feed.served_page = answer  # what the by-date handler calls for every page
    return met


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.timeout(1500)
def test_a_backfill_of_every_retailer_runs_them_in_parallel_and_a_revoked_key_fails_alone(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")  # default_limit 1, now per retailer's pool
    analysts = tmp_path / "analysts" / "ordersync.duckdb"
    good, revoked = RETAILERS[:2], RETAILERS[2]
    keys = {r: retailer_key(r) for r in good} | {revoked: REVOKED}
    first, last = dt.date(2025, 11, 1), dt.date(2025, 11, 21)
    (main_key, main), *others = overlapping_retailers(orders_per_day=20).items()
    with OrderSyncSimulator(main, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY, api_key=main_key,
                            more_retailers=dict(others)) as sim:
        met = meet_at_first_request([sim.retailers_by_key[keys[r]] for r in good])
        env = {**os.environ, "ORDERSYNC_RETAILERS": ",".join(RETAILERS), "ORDERSYNC_BASE_URL": sim.base_url,
               "ORDERSYNC_DUCKDB_PATH": str(analysts), "ORDERSYNC_LOOKBACK_DAYS": "2",
               **{f"ORDERSYNC_API_KEY_{r.upper()}": key for r, key in keys.items()}}
        env.pop("ORDERSYNC_WORKING_DUCKDB_PATH", None)
        with running_deployment(home, env) as ui:
            # What the Materialize dialog launches for every retailer's order_statuses over one range.
            backfill = ui.launch_backfill({"partitionsByAssets": [{
                "assetKey": {"path": [r, "order_statuses"]},
                "partitions": {"range": {"start": str(first), "end": str(last)}}} for r in RETAILERS]})
            runs = ui.wait_for_backfill_runs(backfill, count=3, timeout=600)  # one run per retailer
            # The sensor publishes each successful retailer's file, with that retailer's publish job.
            for run in runs:
                if run["status"] == "SUCCESS":
                    ui.wait_for_runs(("ordersync/published_after_run", run["runId"]), count=1, timeout=240)
            assert ui.wait_for_backfill(backfill, timeout=120) in ("COMPLETED_FAILED", "FAILED")
            assert len(ui.backfill_runs(backfill)) == 3
        instance = dg.DagsterInstance.from_config(str(home))
        by_retailer = {}
        for run in runs:
            record = instance.get_run_by_id(run["runId"])
            (retailer,) = {key.path[0] for key in record.asset_selection}
            by_retailer[retailer] = record
        assert {r: by_retailer[r].status for r in RETAILERS} == {
            **{r: dg.DagsterRunStatus.SUCCESS for r in good}, revoked: dg.DagsterRunStatus.FAILURE}
        failures = [error_chain(e.dagster_event.step_failure_data.error)
                    for e in instance.all_logs(by_retailer[revoked].run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
        assert failures and all("OrderSync refused the API key (HTTP 401" in m for m in failures), failures

        # Each retailer's run logged and recorded only its own retailer (paths, pools, data).
        for retailer, record in by_retailer.items():
            text = "\n".join(str(e) for e in instance.all_logs(record.run_id))
            assert f"{retailer}__order_statuses" in text  # its step keys
            assert not [other for other in RETAILERS if other != retailer and other in text], retailer

        # The two good retailers' DuckDB steps ran at the same time: separate pools, separate files.
        assert met == [True, True], "the good retailers' first requests never met: their steps did not run at once"
        steps = {r: [(s, e) for s, e, _, _ in duckdb_step_intervals(instance, [by_retailer[r].run_id])] for r in good}
        assert any(overlap(a, b) for a in steps[good[0]] for b in steps[good[1]]), steps

        for retailer in good:
            published = str(analysts.parent / retailer / "ordersync.duckdb")
            assert_table_equals_truth(published, sim.retailers_by_key[keys[retailer]].records_for_days(first, last))
        assert not (analysts.parent / revoked / "ordersync.duckdb").exists()

    # No retailer's key anywhere: Dagster's storage and logs, the DuckDB files (values and bytes).
    for key in keys.values():
        assert files_containing(tmp_path, key) == [], key
    for database in tmp_path.rglob("*.duckdb"):
        assert duckdb_columns_containing(str(database), list(keys.values())) == {}, database
