"""order_statuses materialized through Dagster from the embedded simulator equals the simulator's truth."""

import contextlib
import datetime as dt
import re
import threading
import time

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline import sync
from ordersync_pipeline.api.client import OrderSyncClient
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline.assets import order_statuses as order_statuses_module
from ordersync_pipeline.assets.order_statuses import ORDER_STATUS_CHECKS, order_status_checks, order_statuses
from ordersync_pipeline.settings import DEFAULT_STORE_MEMORY_LIMIT as STORE_MEMORY_LIMIT
from ordersync_pipeline.orchestration.resources import OrderSyncWarehouse
from ordersync_pipeline.storage.warehouse import replace_days
from ordersync_pipeline_tests.support import range_tags
from ordersync_pipeline_tests.truth import assert_table_equals_truth

FIRST, LAST = dt.date(2025, 12, 1), dt.date(2025, 12, 7)


def test_a_range_of_partitions_in_one_run_equals_the_simulator_record_by_record(simulator, resources, database):
    result = dg.materialize([order_statuses, *order_status_checks], resources=resources,
                            tags=range_tags(str(FIRST), str(LAST)))
    assert result.success
    truth = simulator.records_for_days(FIRST, LAST)
    assert len(truth) > 7 * 100  # more than one page (limit 100) per day
    assert_table_equals_truth(database, truth)

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["order_status_id_is_unique"] and checks["row_count_matches_api_total"]
    assert checks["delivery_not_before_order"] and checks["required_keys_not_null"]
    assert not checks["statuses_in_known_vocabulary"]  # the simulator sends 'on_hold', which is flagged
    # The six run as one step; a check run alone (the UI's "Execute" on one check) runs only that one.
    alone = dg.AssetCheckKey(dg.AssetKey("order_statuses"), "row_count_matches_api_total")
    rerun = dg.materialize([order_statuses, *order_status_checks], resources=resources,
                           selection=dg.AssetSelection.checks(alone))
    assert [(e.check_name, e.passed) for e in rerun.get_asset_check_evaluations()] == [(alone.name, True)]
    assert not rerun.get_asset_materialization_events()

    events = result.get_asset_materialization_events()
    assert sorted(e.partition for e in events) == [str(FIRST + dt.timedelta(days=i)) for i in range(7)]
    metadata = events[-1].materialization.metadata  # the run's figures, on each partition it materialized
    assert metadata["rows_written"].value == metadata["api_total"].value == len(truth)
    assert metadata["dagster/row_count"].value == len(truth)
    assert metadata["days"].value == 7 and metadata["pages_fetched"].value >= 7
    # The columns are declared on the asset, described as in the file, not repeated on every partition's event.
    assert "dagster/column_schema" not in metadata
    columns = order_statuses.specs_by_key[dg.AssetKey("order_statuses")].metadata["dagster/column_schema"].columns
    assert [c.name for c in columns][:3] == ["order_id", "order_status_id", "supplier_order_id"]
    with duckdb.connect(database, read_only=True) as conn:
        in_file = conn.execute("SELECT column_name, data_type, is_nullable, comment FROM duckdb_columns() "
                               "WHERE table_name = 'order_statuses' ORDER BY column_index").fetchall()
    assert [(c.name, c.type, c.constraints.nullable, c.description) for c in columns] == in_file


def test_rerunning_partitions_replaces_them_without_duplicates(simulator, resources, database):
    for _ in range(2):
        assert dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03").success
    simulator.clock.advance(days=5)  # statuses move on; a re-run stores the new truth for that day only
    assert dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03").success
    assert_table_equals_truth(database, simulator.records_for_day(dt.date(2025, 12, 3)))
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT count(*) - count(DISTINCT order_status_id) FROM order_statuses").fetchall()[0] == (0,)


def test_an_empty_day_stores_nothing_and_succeeds(simulator, resources, database):
    assert dg.materialize([order_statuses], resources=resources, partition_key="2025-01-05").success
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM order_statuses").fetchall()[0] == (0,)
        assert conn.execute("SELECT api_total, rows_stored FROM order_status_loads").fetchall() == [(0, 0)]


@pytest.mark.parametrize("log_every_seconds, lines_logged", [(1e9, 1), (0.0, 7)])
def test_a_range_logs_its_progress_not_a_line_per_day_and_stores_under_the_lower_memory_limit(
        simulator, resources, monkeypatch, log_every_seconds, lines_logged):
    """Each log line is an event Dagster commits to its storage, so a range logs every few seconds (and its last
    day), adding up to every line stored; its connection holds DuckDB's cache to STORE_MEMORY_LIMIT."""
    monkeypatch.setattr(order_statuses_module, "PROGRESS_LOG_SECONDS", log_every_seconds)
    limits_while_storing = set()

    def replace_days_noting_the_limit(conn, loads):
        limits_while_storing.add(conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
        return replace_days(conn, loads)

    monkeypatch.setattr(sync, "replace_days", replace_days_noting_the_limit)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([order_statuses], resources=resources, instance=instance,
                            tags=range_tags(str(FIRST), str(LAST)))
    assert result.success
    progress = [entry.user_message for entry in instance.all_logs(result.run_id) if " days] " in entry.user_message]
    assert len(progress) == lines_logged, progress
    assert progress[-1].startswith(f"[7/7 days] {FIRST + dt.timedelta(days=7 - 7 // lines_logged)}")
    stored = sum(int(re.search(r"stored (\d+) lines", message)[1]) for message in progress)
    assert stored == len(simulator.records_for_days(FIRST, LAST))
    assert limits_while_storing == {"30.5 MiB"}  # 32MB, below the resource's default (80% of RAM)


def test_the_checks_read_the_whole_table_under_the_lower_memory_limit(simulator, resources, monkeypatch):
    """The checks scan the whole table in the run's process: at DuckDB's default limit the uniqueness check's
    GROUP BY alone added 173 MB to the peak of a 730-day run, and it grew with the table."""
    limits = []
    connect = OrderSyncWarehouse.connect

    @contextlib.contextmanager
    def connect_noting_the_limit(self, *args, **kwargs):
        with connect(self, *args, **kwargs) as conn:
            limits.append(conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
            yield conn

    monkeypatch.setattr(OrderSyncWarehouse, "connect", connect_noting_the_limit)
    result = dg.materialize([order_statuses, *order_status_checks], resources=resources,
                            tags=range_tags(str(FIRST), str(FIRST)))
    assert result.success and len(result.get_asset_check_evaluations()) == len(ORDER_STATUS_CHECKS)
    assert limits == ["30.5 MiB"] * 2  # the store's connection, then the checks' one


def test_a_lower_memory_limit_is_never_raised_above_the_configured_one(database):
    for configured, expected in (("256MB", "30.5 MiB"), ("16MB", "15.2 MiB")):
        warehouse = OrderSyncWarehouse(database=database, connection_config={"memory_limit": configured})
        with warehouse.connect(memory_limit_at_most=STORE_MEMORY_LIMIT) as conn:
            assert conn.execute("SELECT current_setting('memory_limit')").fetchall() == [(expected,)]


def test_days_in_flight_are_normalised_a_few_at_a_time_and_come_out_in_order(simulator, monkeypatch):
    """The days of a range finish fetching together; decoded and normalised all at once they would hold ~4 MB
    each. At most DAYS_NORMALISED_AT_ONCE are, and the others wait as undecoded pages."""
    normalise = sync.normalise_order_statuses
    lock, at_once, most_at_once = threading.Lock(), [0], [0]

    def normalise_slowly(*args, **kwargs):
        with lock:
            at_once[0] += 1
            most_at_once[0] = max(most_at_once[0], at_once[0])
        time.sleep(0.05)  # long enough for every finished day to be waiting here
        try:
            return normalise(*args, **kwargs)
        finally:
            with lock:
                at_once[0] -= 1

    monkeypatch.setattr(sync, "normalise_order_statuses", normalise_slowly)
    days = [FIRST + dt.timedelta(days=i) for i in range(8)]
    with OrderSyncClient(SIMULATOR_API_KEY, simulator.base_url, max_concurrent_pages=1) as client:
        loads = list(sync.fetch_day_loads(client, days, days_in_flight=8))
    assert [load.day for load in loads] == days
    assert sum(load.rows.height for load in loads) == len(simulator.records_for_days(FIRST, days[-1]))
    assert most_at_once[0] == sync.DAYS_NORMALISED_AT_ONCE


def test_days_are_fetched_ahead_while_the_caller_stores_and_no_further(simulator, monkeypatch):
    """While the caller stores a day it took, the pool goes on: days_in_flight days at a time, up to
    days_in_flight + days_ready_ahead days beyond those the caller took. Refilled only when the caller took a day,
    the window emptied during every transaction a range stored."""
    lock, fetching, most_fetching, started, finished = threading.Lock(), [0], [0], [], [0]
    fetch, fetch_day_load = OrderSyncClient.fetch_order_statuses_for_day, sync.fetch_day_load

    def fetch_counting(self, day):
        with lock:
            started.append(day)
            fetching[0] += 1
            most_fetching[0] = max(most_fetching[0], fetching[0])
        try:
            return fetch(self, day)
        finally:
            with lock:
                fetching[0] -= 1

    def fetch_day_load_counting(*args, **kwargs):
        try:
            return fetch_day_load(*args, **kwargs)
        finally:
            with lock:
                finished[0] += 1

    monkeypatch.setattr(OrderSyncClient, "fetch_order_statuses_for_day", fetch_counting)
    monkeypatch.setattr(sync, "fetch_day_load", fetch_day_load_counting)
    days = [FIRST - dt.timedelta(days=6 - i) for i in range(12)]  # 12 days before the simulator's "now"
    with OrderSyncClient(SIMULATOR_API_KEY, simulator.base_url, max_concurrent_pages=1) as client, \
            contextlib.closing(sync.fetch_day_loads(client, days, days_in_flight=2, days_ready_ahead=3)) as loads:
        taken = [next(loads)]
        # The caller is now "storing": 2 + 3 days were submitted, and one more when it took the first.
        for _ in range(1000):
            with lock:
                if finished[0] == 6:
                    break
            time.sleep(0.01)
        else:
            pytest.fail(f"the 6 days submitted were not all fetched within 10 s ({finished[0]} were)")
        time.sleep(0.1)  # long enough for a seventh day to start, if one could
        assert sorted(started) == days[:6]
        taken.extend(loads)
    assert [load.day for load in taken] == days
    assert sum(load.rows.height for load in taken) == len(simulator.records_for_days(days[0], days[-1]))
    assert most_fetching[0] <= 2


def test_storing_a_range_fetches_the_next_transactions_days_ahead(simulator, conn, monkeypatch):
    """store_days asks for a transaction's worth of days fetched ahead, so fetching goes on while it stores."""
    asked = []
    fetch_day_loads = sync.fetch_day_loads

    def fetch_day_loads_noting(*args, **kwargs):
        asked.append((kwargs["days_in_flight"], kwargs["days_ready_ahead"]))
        return fetch_day_loads(*args, **kwargs)

    monkeypatch.setattr(sync, "fetch_day_loads", fetch_day_loads_noting)
    days = [FIRST + dt.timedelta(days=i) for i in range(5)]
    with OrderSyncClient(SIMULATOR_API_KEY, simulator.base_url) as client:
        stored = list(sync.store_days(client, conn, days, days_in_flight=2, days_per_transaction=3, pii_mode="raw"))
    assert [load.day for load in stored] == days
    assert asked and set(asked) == {(2, 3)}  # every round, re-reads included
    assert conn.execute("SELECT count(*) FROM order_statuses").fetchall()[0][0] == len(
        simulator.records_for_days(days[0], days[-1]))
