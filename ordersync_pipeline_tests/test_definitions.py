"""A snapshot of the code location: the names analysts, schedules and scripts depend on."""

import dagster as dg
import pytest

from ordersync_pipeline.definitions import defs


def test_assets_checks_jobs_and_schedule_are_the_public_names():
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "order_statuses", "order_status_refresh", "delivery_lead_times", "open_orders", "open_order_backlog",
        "stuck_lines", "supplier_scorecard", "carrier_scorecard", "analyst_database"}
    assert {key.name for key in graph.asset_check_keys} == {
        "order_status_id_is_unique", "required_keys_not_null", "delivery_not_before_order",
        "statuses_in_known_vocabulary", "row_count_matches_api_total", "no_rejected_records", "no_stuck_lines",
        "updated_within_freshness_window"}
    freshness = {key.asset_key.to_user_string() for key in graph.asset_check_keys
                 if key.name == "updated_within_freshness_window"}
    assert freshness == {"order_statuses", "analyst_database"}
    # The policy the UI shows, with the default window (26 hours), on the analysts' file; not on order_statuses,
    # where Dagster would evaluate it at every partition of a range run.
    policy = graph.get(dg.AssetKey("analyst_database")).freshness_policy
    assert policy is not None and policy.fail_window.to_timedelta().total_seconds() == 26 * 3600
    assert graph.get(dg.AssetKey("order_statuses")).freshness_policy is None
    job = defs.resolve_job_def("daily_order_sync")
    assert set(job.asset_layer.asset_graph.get_all_asset_keys()) >= graph.get_all_asset_keys()
    assert job.partitions_def == graph.get(dg.AssetKey("order_statuses")).partitions_def
    schedule = defs.resolve_schedule_def("daily_order_sync_schedule")
    assert schedule.cron_schedule == "0 6 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} >= {
        "order_statuses", "analyst_database"}
    for name in ("publish_after_backfills", "freshness_of_published_data", "alert_on_run_failure", "alert_on_recovery"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_error_checks_block_publishing_and_warnings_do_not():
    for checks_def in defs.asset_checks:
        for spec in checks_def.check_specs:
            assert spec.blocking == (spec.name in {
                "order_status_id_is_unique", "required_keys_not_null", "row_count_matches_api_total"}), spec.name


def test_partitions_are_utc_days_from_the_configured_start():
    partitions = defs.resolve_asset_graph().get(dg.AssetKey("order_statuses")).partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert partitions.timezone == "UTC" and partitions.start.strftime("%Y-%m-%d") == "2025-01-01"


def test_every_writer_is_in_the_duckdb_pool_with_a_single_run_backfill_policy():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assets_def = defs.resolve_assets_def(key)
        assert assets_def.backfill_policy == dg.BackfillPolicy.single_run()
        assert {op.pool for op in assets_def.node_def.iterate_op_defs()} == {"ordersync_duckdb"}
    for checks_def in defs.asset_checks:  # the checks open the file too, except freshness (Dagster's records only)
        names = {spec.name for spec in checks_def.check_specs}
        pools = {"ordersync_duckdb"} if names != {"updated_within_freshness_window"} else {None}
        assert {op.pool for op in checks_def.node_def.iterate_op_defs()} == pools, names


def test_the_api_key_is_an_env_var_not_a_value():
    resource = defs.resources["ordersync"]
    assert isinstance(resource.api_key, dg.EnvVar) and resource.api_key.env_var_name == "ORDERSYNC_API_KEY"


def test_a_malformed_numeric_setting_names_the_variable(monkeypatch):
    from ordersync_pipeline.orchestration.resources import resources_from_env

    monkeypatch.setenv("ORDERSYNC_DAYS_IN_FLIGHT", "four")
    with pytest.raises(ValueError, match="ORDERSYNC_DAYS_IN_FLIGHT must be a whole number >= 1, got 'four'"):
        resources_from_env()
