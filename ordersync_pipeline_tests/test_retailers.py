"""Many retailers in one deployment (ORDERSYNC_RETAILERS): each retailer's copy of the pipeline, isolated."""

import datetime as dt
import os
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.reporting.across_retailers import across_retailers_sql
from ordersync_pipeline.definitions import (
    ASSETS,
    CHECKS,
    build_definitions,
    build_many_retailers_definitions,
    definitions_from_env,
)
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse, resources_from_env
from ordersync_pipeline.settings import retailers_from_env
from ordersync_pipeline.simulator.server import OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import (
    RETAILERS,
    SIM_FIRST_DAY,
    SIM_NOW,
    overlapping_retailers,
    range_tags,
    retailer_key,
    retailer_resources,
)
from ordersync_pipeline_tests.truth import assert_table_equals_truth, stored_rows

TODAYS_ASSETS = {a.key.to_user_string() for a in ASSETS}
TODAYS_CHECKS = {spec.name for c in CHECKS for spec in c.check_specs}


@pytest.mark.parametrize("value", ["Acme", "acme,,globex", "acme;globex", "acme,acme", "acme-corp"])
def test_retailer_names_are_checked_at_load_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("ORDERSYNC_RETAILERS", value)
    with pytest.raises(ValueError, match="ORDERSYNC_RETAILERS"):
        definitions_from_env()


def test_each_retailer_reads_its_own_key_and_files_beside_the_configured_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDERSYNC_RETAILERS", " acme,globex_2 ")
    monkeypatch.delenv("ORDERSYNC_DUCKDB_PATH", raising=False)
    monkeypatch.delenv("ORDERSYNC_WORKING_DUCKDB_PATH", raising=False)
    assert retailers_from_env() == ["acme", "globex_2"]
    resources = resources_from_env("acme")
    assert resources["ordersync"].api_key.env_var_name == "ORDERSYNC_API_KEY_ACME"
    assert resources["warehouse"].analyst_database == "data/acme/ordersync.duckdb"
    assert resources["warehouse"].database == "data/acme/.ordersync-working/ordersync.duckdb"
    monkeypatch.setenv("ORDERSYNC_DUCKDB_PATH", str(tmp_path / "shared" / "orders.duckdb"))
    monkeypatch.setenv("ORDERSYNC_WORKING_DUCKDB_PATH", str(tmp_path / "work" / "w.duckdb"))
    resources = resources_from_env("globex_2")
    assert resources["ordersync"].api_key.env_var_name == "ORDERSYNC_API_KEY_GLOBEX_2"
    assert resources["warehouse"].analyst_database == str(tmp_path / "shared" / "globex_2" / "orders.duckdb")
    assert resources["warehouse"].database == str(tmp_path / "work" / "globex_2" / "w.duckdb")
    defs = definitions_from_env()
    assert {k.path[0] for k in defs.resolve_asset_graph().get_all_asset_keys()} == {"acme", "globex_2"}


def test_every_retailer_has_a_prefixed_copy_in_its_own_pool_with_its_own_jobs_and_schedule(tmp_path):
    defs = build_many_retailers_definitions(retailer_resources(tmp_path, "http://127.0.0.1:1"))
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        f"{r}/{name}" for r in RETAILERS for name in TODAYS_ASSETS}
    assert {(k.asset_key.path[0], k.name) for k in graph.asset_check_keys} == {
        (r, name) for r in RETAILERS for name in TODAYS_CHECKS}
    for retailer in RETAILERS:
        keys = [k for k in graph.get_all_asset_keys() if k.path[0] == retailer]
        for key in keys:
            assets_def = defs.resolve_assets_def(key)
            assert {op.pool for op in assets_def.node_def.iterate_op_defs()} == {f"ordersync_duckdb_{retailer}"}
            assert assets_def.backfill_policy == dg.BackfillPolicy.single_run()
            assert {k.path[0] for k in graph.get(key).parent_keys} <= {retailer}  # deps stay within the retailer
            assert assets_def.required_resource_keys - {"io_manager"} <= {f"ordersync_{retailer}", f"warehouse_{retailer}"}
        for checks_def in defs.asset_checks:
            (asset_key,) = {check_key.asset_key for check_key in checks_def.check_keys}
            if asset_key.path[0] == retailer:  # freshness reads Dagster's records, not the file
                names = {check_key.name for check_key in checks_def.check_keys}
                pools = {None} if names == {"updated_within_freshness_window"} else {f"ordersync_duckdb_{retailer}"}
                assert {op.pool for op in checks_def.node_def.iterate_op_defs()} == pools
        daily = defs.resolve_job_def(f"daily_order_sync_{retailer}")
        assert set(daily.asset_layer.selected_asset_keys) == set(keys)
        assert daily.tags["ordersync/retailer"] == retailer
        publish = defs.resolve_job_def(f"publish_analyst_database_{retailer}")
        assert {k.path[0] for k in publish.asset_layer.selected_asset_keys} == {retailer}
        schedule = defs.resolve_schedule_def(f"daily_order_sync_{retailer}_schedule")
        assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 6 * * *", "UTC")
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        days = graph.get(keys[0]).partitions_def
        assert days.get_partition_keys(dt.datetime(2025, 12, 10)) == \
            dg.DailyPartitionsDefinition("2025-01-01", timezone="UTC").get_partition_keys(dt.datetime(2025, 12, 10))
    assert defs.resolve_sensor_def("publish_after_backfills").default_status == dg.DefaultSensorStatus.RUNNING


def test_each_retailer_has_the_same_days_under_a_partitions_definition_of_its_own(tmp_path):
    """What keeps a backfill of several retailers one run per retailer: the backfill daemon groups assets by
    partitions definition (retailer_scope.retailer_partitions says why). The daemon's grouping itself is proven
    through a real daemon in test_retailers_deployment.py; here, quickly, its premise through public API."""
    defs = build_many_retailers_definitions(retailer_resources(tmp_path, "http://127.0.0.1:1"))
    single = build_definitions({"ordersync": OrderSyncResource(api_key="k", base_url="http://127.0.0.1:1"),
                                "warehouse": OrderSyncWarehouse(database=str(tmp_path / "w.duckdb"),
                                                                analyst_database=str(tmp_path / "a.duckdb"))})
    days = single.resolve_assets_def("order_statuses").partitions_def.get_partition_keys(
        current_time=SIM_NOW)
    by_retailer = {}
    for retailer in RETAILERS:
        definitions = {defs.resolve_assets_def(dg.AssetKey([retailer, name])).partitions_def
                       for name in ("order_statuses", "order_status_refresh")}
        assert len(definitions) == 1, retailer  # one retailer's raw assets: one run
        (by_retailer[retailer],) = definitions
        assert by_retailer[retailer].get_partition_keys(current_time=SIM_NOW) == days
    assert len(set(by_retailer.values())) == len(RETAILERS)  # never grouped across retailers


@pytest.mark.slow
def test_three_retailers_with_overlapping_ids_each_hold_only_their_own_lines(tmp_path):
    first, last = dt.date(2025, 11, 24), dt.date(2025, 12, 7)  # first = the refresh lookback start
    feeds = overlapping_retailers()
    (main_key, main), *others = feeds.items()
    with OrderSyncSimulator(main, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY, api_key=main_key,
                            more_retailers=dict(others)) as sim:
        truth = {r: sim.retailers_by_key[retailer_key(r)].records_for_days(first, dt.date(2025, 12, 9))
                 for r in RETAILERS}
        # The ids do collide across retailers, or the test would prove nothing.
        for field in ("po_number", "supplier_order_id"):
            values = [{rec[field] for rec in truth[r]} for r in RETAILERS]
            assert values[0] & values[1] and values[0] & values[2] and values[1] & values[2], field
        resources = retailer_resources(tmp_path, sim.base_url)
        defs = build_many_retailers_definitions(resources)
        instance = dg.DagsterInstance.ephemeral()

        # A backfill of each retailer's order_statuses (what the UI's range backfill runs), then the sensor.
        for retailer in RETAILERS:
            backfill = defs.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey([retailer, "order_statuses"])],
                tags=range_tags(str(first), str(last)))
            assert backfill.success
            sensor = defs.resolve_sensor_def("publish_after_backfills")
            (request,) = sensor(dg.build_run_status_sensor_context(
                "publish_after_backfills", backfill.get_run_success_event(), instance, backfill.dagster_run))
            assert request.job_name == f"publish_analyst_database_{retailer}" and request.partition_key == str(last)
            assert defs.resolve_job_def(request.job_name).execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags).success

        # Two mornings: every retailer's schedule ticks; each request is executed as the daemon would.
        for morning in (dt.datetime(2025, 12, 9, 6, tzinfo=dt.timezone.utc), SIM_NOW):
            sim.clock.set(morning)
            for retailer in RETAILERS:
                schedule = defs.resolve_schedule_def(f"daily_order_sync_{retailer}_schedule")
                (request,) = schedule.evaluate_tick(dg.build_schedule_context(
                    instance=instance, scheduled_execution_time=morning)).run_requests
                job = request.job_name or schedule.job_name
                assert job == f"daily_order_sync_{retailer}" and request.tags["ordersync/retailer"] == retailer
                assert request.partition_key == str(morning.date() - dt.timedelta(days=1))
                assert defs.resolve_job_def(job).execute_in_process(
                    instance=instance, partition_key=request.partition_key, tags=request.tags).success

    for retailer in RETAILERS:
        published = resources[retailer]["warehouse"].analyst_database
        for database in (resources[retailer]["warehouse"].database, published):
            assert_table_equals_truth(database, truth[retailer])  # exactly its lines, none of the others'
        # A PO that exists at two retailers: each retailer's file answers with that retailer's lines only.
        shared = ({r["po_number"] for r in truth[retailer]}
                  & {r["po_number"] for other in RETAILERS if other != retailer for r in truth[other]})
        po = sorted(shared)[0]
        assert set(stored_rows(published, f"po_number = '{po}'")) == {
            r["order_status_id"] for r in truth[retailer] if r["po_number"] == po}
        with duckdb.connect(published, read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM order_status_refreshes").fetchall()[0][0] == 2

    # Across retailers: one session over every published file, with a retailer column.
    with duckdb.connect() as conn:
        conn.execute(across_retailers_sql({r: resources[r]["warehouse"].analyst_database for r in RETAILERS}))
        counts = dict(conn.execute("SELECT retailer, count(*) FROM order_statuses GROUP BY 1").fetchall())
        assert counts == {r: len(truth[r]) for r in RETAILERS}
        by_po = conn.execute("SELECT retailer, order_status_id FROM order_statuses WHERE po_number = ?", [po]).fetchall()
        assert {r for r, _ in by_po} >= {retailer, *(o for o in RETAILERS if any(
            x["po_number"] == po for x in truth[o]))}
        assert conn.execute("SELECT count(DISTINCT retailer) FROM open_orders").fetchall()[0][0] == 3
        with pytest.raises(duckdb.Error):  # read-only: nobody writes a retailer's file through the comparison
            conn.execute("CREATE TABLE acme.main.scratch (x INTEGER)")


def test_across_retailers_command_prints_the_script_or_says_what_to_set(monkeypatch, capsys, tmp_path):
    from ordersync_pipeline.cli import main

    monkeypatch.delenv("ORDERSYNC_RETAILERS", raising=False)
    assert main(["across-retailers"]) == 2
    assert "ORDERSYNC_RETAILERS is not set" in capsys.readouterr().err
    monkeypatch.setenv("ORDERSYNC_RETAILERS", "acme,globex")
    monkeypatch.setenv("ORDERSYNC_DUCKDB_PATH", str(tmp_path / "it's" / "o.duckdb"))
    assert main(["across-retailers"]) == 0
    script = capsys.readouterr().out
    assert f"ATTACH IF NOT EXISTS '{tmp_path}/it''s/acme/o.duckdb' AS \"acme\" (READ_ONLY);" in script
    assert "SELECT 'globex' AS retailer, * FROM \"globex\".main.order_statuses" in script


@pytest.mark.slow
def test_demo_with_retailers_loads_each_and_prints_them_side_by_side(tmp_path):
    """`ordersync demo --retailers 2` as the README gives it: a process of its own, no ORDERSYNC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERSYNC_", "DAGSTER_"))}
    completed = subprocess.run([sys.executable, "-m", "ordersync_pipeline.cli", "demo", "--retailers", "2", "--days", "2",
                                "--orders-per-day", "20"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    script = tmp_path / "data" / "all_retailers.sql"
    with duckdb.connect() as conn:
        conn.execute(script.read_text())
        lines = dict(conn.execute("SELECT retailer, count(*) FROM order_statuses GROUP BY 1").fetchall())
    assert set(lines) == {"acme", "globex"} and all(lines.values())
    summary = completed.stdout.split("Lines per retailer (all_retailers.sql):")[1]
    for retailer, count in lines.items():  # the printed table holds what the comparison script reads
        assert any(retailer in row and f" {count} " in row for row in summary.splitlines()), summary
    assert f"duckdb -init {script}" in completed.stdout
