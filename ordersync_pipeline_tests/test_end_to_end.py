"""order_statuses materialized through Dagster from the embedded simulator equals the simulator's truth."""

import datetime as dt

import dagster as dg
import duckdb

from ordersync_pipeline.assets.order_statuses import order_status_checks, order_statuses
from ordersync_pipeline_tests.conftest import range_tags
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

    events = result.get_asset_materialization_events()
    assert sorted(e.partition for e in events) == [str(FIRST + dt.timedelta(days=i)) for i in range(7)]
    metadata = events[-1].materialization.metadata  # the run's figures, on each partition it materialized
    assert metadata["rows_written"].value == metadata["api_total"].value == len(truth)
    assert metadata["dagster/row_count"].value == len(truth)
    assert metadata["days"].value == 7 and metadata["pages_fetched"].value >= 7
    assert [c.name for c in metadata["dagster/column_schema"].schema.columns][:3] == [
        "order_id", "order_status_id", "supplier_order_id"]


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
