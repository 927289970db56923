"""Alert settings and wiring without a deployment (test_freshness_and_alerts.py sends real messages)."""

import dagster as dg

from ordersync_pipeline.alerts import AlertNotifier, alerts_from_env, redacted_first_line
from ordersync_pipeline.definitions import build_many_retailers_definitions
from ordersync_pipeline_tests.test_retailers import RETAILERS, retailer_resources

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
