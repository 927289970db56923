"""Alert and freshness-sensor settings and decisions without a deployment (test_freshness_and_alerts.py sends real
messages from a running one)."""

import types

import dagster as dg

from ordersync_pipeline.orchestration.alerts import AlertNotifier, alerts_from_env, redacted_first_line
from ordersync_pipeline.definitions import build_many_retailers_definitions
from ordersync_pipeline_tests.support import RETAILERS, retailer_resources

ALERT_SETTINGS = ("ORDERSYNC_ALERT_WEBHOOK_URL", "ORDERSYNC_ALERT_SMTP_HOST", "ORDERSYNC_ALERT_SMTP_PASSWORD",
                  "ORDERSYNC_ALERT_SMTP_FROM", "ORDERSYNC_ALERT_SMTP_TO", "ORDERSYNC_ALERT_SMTP_USER")


def test_without_settings_nothing_is_sent(monkeypatch):
    for name in ALERT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    notifier = alerts_from_env()
    assert not notifier.enabled and notifier.send("subject", "text", {}) == []


def test_the_webhook_url_and_the_password_are_env_vars_not_values(monkeypatch):
    monkeypatch.setenv("ORDERSYNC_ALERT_WEBHOOK_URL", "https://hooks.example/T000/secret")
    monkeypatch.setenv("ORDERSYNC_ALERT_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("ORDERSYNC_ALERT_SMTP_PASSWORD", "pa55")
    monkeypatch.setenv("ORDERSYNC_ALERT_SMTP_FROM", "a@example.com")
    monkeypatch.setenv("ORDERSYNC_ALERT_SMTP_TO", "b@example.com,c@example.com")
    notifier = alerts_from_env()
    assert isinstance(notifier.webhook_url, dg.EnvVar) and notifier.webhook_url.env_var_name == "ORDERSYNC_ALERT_WEBHOOK_URL"
    assert isinstance(notifier.smtp_password, dg.EnvVar)
    assert notifier.smtp_starttls and notifier.smtp_port == 587


def test_error_lines_lose_api_keys_and_receiver_secrets(monkeypatch):
    monkeypatch.setenv("ORDERSYNC_API_KEY_ACME", "pk_live_acme_secret")
    notifier = AlertNotifier(smtp_password="pa55word", webhook_url="https://hooks.example/T0/tok3n")
    line = redacted_first_line("\n  OrderSync refused pk_live_acme_secret (X-API-Key: pk_other) pa55word "
                               "https://hooks.example/T0/tok3n\nsecond line", notifier)
    assert line.startswith("OrderSync refused") and "second" not in line
    for secret in ("pk_live_acme_secret", "pk_other", "pa55word", "tok3n"):
        assert secret not in line


def test_many_retailers_are_watched_by_one_set_of_sensors(tmp_path):
    defs = build_many_retailers_definitions(retailer_resources(tmp_path, "http://127.0.0.1:1"))
    failure = defs.resolve_sensor_def("alert_on_run_failure")
    recovery = defs.resolve_sensor_def("alert_on_recovery")
    freshness = defs.resolve_sensor_def("freshness_of_published_data")
    assert {failure.default_status, recovery.default_status, freshness.default_status} == {
        dg.DefaultSensorStatus.RUNNING}
    assert "alerts" in defs.resources
    checks = {(key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys
              if key.name == "updated_within_freshness_window"}
    assert checks == {(f"{r}/{name}", "updated_within_freshness_window") for r in RETAILERS
                      for name in ("order_statuses", "analyst_database")}
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey([RETAILERS[0], "analyst_database"])).freshness_policy is not None


def test_the_freshness_sensor_leaves_a_materialization_of_this_second_to_its_next_tick(tmp_path, monkeypatch):
    """Dagster's SQLite event log stamps a reported check result in whole seconds: reported in the second of the
    materialization it judges, it counts as older than it and the UI shows no result for that materialization
    (seen once in CI: the freshness check of a just-published file read back as None)."""
    from ordersync_pipeline.orchestration import freshness

    monkeypatch.setenv("ORDERSYNC_FRESHNESS_HOURS", "1")

    @dg.asset(name="analyst_database")
    def analyst_database() -> None:
        return None

    key = dg.AssetKey("analyst_database")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        dg.materialize([analyst_database], instance=instance)
        materialized = instance.get_latest_materialization_event(key).timestamp
        sensor = freshness.freshness_sensor([key])
        ticks = iter([materialized + 0.3, materialized + 1.2])
        monkeypatch.setattr(freshness, "time", types.SimpleNamespace(time=lambda: next(ticks)))
        first = sensor(dg.build_sensor_context(instance=instance, resources={"alerts": AlertNotifier()}))
        assert first.asset_events == [] and first.cursor == "{}"
        second = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                                resources={"alerts": AlertNotifier()}))
    (evaluation,) = second.asset_events
    assert evaluation.passed and evaluation.check_name == "updated_within_freshness_window"


# -- the sensors' decisions, on real runs of a tiny job in an ephemeral instance ---------------------------
def _tiny_job_runs(instance: dg.DagsterInstance, outcomes: list[bool]) -> list[dg.DagsterRun]:
    @dg.op
    def step(context) -> None:
        if context.run.tags.get("fail") == "yes":
            raise RuntimeError("OrderSync refused the API key pk_live_tiny_secret\nsecond line")

    @dg.job(tags={"ordersync/retailer": "acme", "dagster/partition": "2025-12-09"})
    def daily_order_sync_acme():
        step()

    results = [daily_order_sync_acme.execute_in_process(instance=instance, raise_on_error=False,
                                                        tags={"fail": "no" if ok else "yes"}) for ok in outcomes]
    return [instance.get_run_by_id(result.run_id) for result in results]


def _evaluate(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, run: dg.DagsterRun, notifier: AlertNotifier):
    status = dg.DagsterEventType.RUN_FAILURE if run.status == dg.DagsterRunStatus.FAILURE else dg.DagsterEventType.RUN_SUCCESS
    (record,) = instance.get_records_for_run(run.run_id, of_type=status).records
    context = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=record.event_log_entry.dagster_event,
                                                 dagster_instance=instance, dagster_run=run,
                                                 resources={"alerts": notifier})
    if run.status == dg.DagsterRunStatus.FAILURE:
        context = context.for_run_failure()
    return sensor(context)


def test_one_failure_message_none_for_a_run_that_will_be_retried_and_recovered_after(monkeypatch):
    from ordersync_pipeline.orchestration.alerts import build_alert_sensors

    monkeypatch.setenv("ORDERSYNC_API_KEY_ACME", "pk_live_tiny_secret")
    sent = []
    monkeypatch.setattr(AlertNotifier, "send", lambda self, subject, text, fields: sent.append((subject, fields)) or [])
    notifier = AlertNotifier(webhook_url="http://127.0.0.1:9/hook", ui_url="http://ui.example")
    failure_sensor, recovery_sensor = build_alert_sensors()
    with dg.DagsterInstance.ephemeral() as instance:
        retried, failed, good = _tiny_job_runs(instance, [False, False, True])
        instance.add_run_tags(retried.run_id, {"dagster/will_retry": "true"})
        assert isinstance(_evaluate(failure_sensor, instance, instance.get_run_by_id(retried.run_id), notifier),
                          dg.SkipReason)
        assert sent == []
        _evaluate(failure_sensor, instance, failed, notifier)
        ((subject, fields),) = sent
        assert fields["retailer"] == "acme" and fields["job"] == "daily_order_sync_acme"
        assert fields["partition"] == "2025-12-09" and fields["step"] == "step"
        # The step's own error (not Dagster's wrapper), first line only, the key redacted.
        assert fields["error"].endswith("OrderSync refused the API key [redacted]"), fields["error"]
        assert fields["run_url"] == f"http://ui.example/runs/{failed.run_id}" and "failed" in subject
        _evaluate(recovery_sensor, instance, good, notifier)
        assert len(sent) == 2 and "recovered" in sent[1][0] and sent[1][1]["recovered_from_run_id"] == failed.run_id


def test_a_failed_blocking_check_is_named_in_the_message(monkeypatch):
    """The six checks of order_statuses run as one step, so the step's name no longer says which one failed."""
    from ordersync_pipeline.orchestration.alerts import build_alert_sensors

    sent = []
    monkeypatch.setattr(AlertNotifier, "send", lambda self, subject, text, fields: sent.append(text) or [])
    key = dg.AssetKey("order_statuses")

    @dg.asset(name="order_statuses")
    def order_statuses() -> None:
        return None

    @dg.multi_asset_check(name="order_statuses_checks", specs=[
        dg.AssetCheckSpec("order_status_id_is_unique", asset=key, blocking=True),
        dg.AssetCheckSpec("row_count_matches_api_total", asset=key, blocking=True)])
    def checks():
        yield dg.AssetCheckResult(asset_key=key, check_name="order_status_id_is_unique", passed=True)
        yield dg.AssetCheckResult(asset_key=key, check_name="row_count_matches_api_total", passed=False)

    failure_sensor, _ = build_alert_sensors()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([order_statuses, checks], instance=instance, raise_on_error=False)
        assert not result.success
        _evaluate(failure_sensor, instance, instance.get_run_by_id(result.run_id), AlertNotifier(
            webhook_url="http://127.0.0.1:9/hook"))
    (text,) = sent
    assert "failed in step order_statuses_checks: " in text, text
    assert "1 blocking asset check failed with ERROR severity: order_statuses: row_count_matches_api_total" in text
