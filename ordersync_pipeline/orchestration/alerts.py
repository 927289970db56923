"""Alerts: a failed run, a recovered job and stale published data, sent to a webhook and/or by e-mail.

Settings (read when the definitions load; none set means nothing is sent): ORDERSYNC_ALERT_WEBHOOK_URL (a JSON
POST whose `text` Slack and Teams incoming webhooks show, plus the same facts as fields for other receivers),
ORDERSYNC_ALERT_SMTP_HOST/_PORT/_USER/_PASSWORD/_FROM/_TO/_STARTTLS, and ORDERSYNC_UI_URL for the run's link.
The webhook URL (it carries the receiver's token) and the SMTP password are resolved through Dagster's EnvVar
when a message is sent, and never appear in messages or logs.

What it knows: a run's tags (retailer, partition), its failed steps' errors and whether Dagster will retry
it. One message per failed run; a failed run Dagster retries sends nothing (its last attempt speaks for it);
the next success of a job whose previous run failed sends "recovered". What it does not know: whether a
receiver showed the message — a receiver that refuses it only leaves a warning in the sensor's log.
"""

import json
import smtplib
import ssl
import urllib.request
from email.message import EmailMessage

import dagster as dg
from pydantic import Field

from ordersync_pipeline.api.errors import REDACTED, redact_key
from ordersync_pipeline.orchestration.retailer_scope import RETAILER_TAG
from ordersync_pipeline.settings import (
    DEFAULT_UI_URL,
    AlertSettings,
    Settings,
    api_key_variables,
)

class AlertNotifier(dg.ConfigurableResource):
    """Where alerts go. With neither a webhook nor an SMTP host, `send` does nothing."""

    webhook_url: str | None = Field(default=None, description="EnvVar('ORDERSYNC_ALERT_WEBHOOK_URL')")
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = Field(default=None, description="EnvVar('ORDERSYNC_ALERT_SMTP_PASSWORD')")
    smtp_from: str | None = None
    smtp_to: str | None = Field(default=None, description="recipients, comma-separated")
    smtp_starttls: bool = True
    ui_url: str = DEFAULT_UI_URL
    timeout_seconds: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.smtp_host)

    def secrets(self) -> list[str]:
        return [s for s in (self.webhook_url, self.smtp_password) if s]

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def send(self, subject: str, text: str, fields: dict[str, str]) -> list[str]:
        """Send to every configured receiver; returns the problems (one line each, secrets redacted)."""
        problems = []
        if self.webhook_url:
            body = {"text": f"{subject}\n{text}", "title": subject, "summary": subject, "fields": fields}
            request = urllib.request.Request(self.webhook_url, data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    response.read()
            except Exception as exc:  # noqa: BLE001 - any failure of a receiver is reported, not raised
                problems.append(self._redact(f"webhook: {type(exc).__name__}: {exc}"))
        if self.smtp_host:
            message = EmailMessage()
            message["Subject"], message["From"], message["To"] = subject, self.smtp_from, self.smtp_to
            message.set_content(text + "\n\n" + "\n".join(f"{k}: {v}" for k, v in fields.items()) + "\n")
            try:
                with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_seconds) as smtp:
                    if self.smtp_starttls:
                        smtp.starttls(context=ssl.create_default_context())
                    if self.smtp_user:
                        smtp.login(self.smtp_user, self.smtp_password or "")
                    smtp.send_message(message)
            except Exception as exc:  # noqa: BLE001
                problems.append(self._redact(f"smtp: {type(exc).__name__}: {exc}"))
        return problems

    def _redact(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, REDACTED)
        return text


def alerts_from_settings(settings: AlertSettings) -> AlertNotifier:
    """The notifier as the settings say (settings.py checks them; a half-configured SMTP fails there)."""
    return AlertNotifier(
        webhook_url=dg.EnvVar(settings.webhook_url_variable) if settings.webhook_url_variable else None,
        smtp_host=settings.smtp_host,
        smtp_port=settings.smtp_port,
        smtp_user=settings.smtp_user,
        smtp_password=dg.EnvVar(settings.smtp_password_variable) if settings.smtp_password_variable else None,
        smtp_from=settings.smtp_from,
        smtp_to=settings.smtp_to,
        smtp_starttls=settings.smtp_starttls,
        ui_url=settings.ui_url,
    )


def alerts_from_env() -> AlertNotifier:
    return alerts_from_settings(Settings.from_env().alerts)


def alert_sensor_seconds() -> int:
    return Settings.from_env().alerts.sensor_seconds


def _api_keys() -> list[str]:
    """Every OrderSync key of this deployment, to redact from error text (read through EnvVar)."""
    return [value for value in (dg.EnvVar(name).get_value() for name in api_key_variables()) if value]


def redacted_first_line(text: str, notifier: AlertNotifier) -> str:
    line = next((line.strip() for line in (text or "").splitlines() if line.strip()), "(no message)")
    line = redact_key(line, "")  # X-API-Key header values, whatever the key
    for key in _api_keys():
        line = redact_key(line, key)
    return notifier._redact(line)[:300]


def _partition(run: dg.DagsterRun) -> str:
    start, end = run.tags.get("dagster/asset_partition_range_start"), run.tags.get("dagster/asset_partition_range_end")
    if start and end:
        return start if start == end else f"{start}...{end}"
    return run.tags.get("dagster/partition", "(none)")


def _fields(run: dg.DagsterRun, notifier: AlertNotifier) -> dict[str, str]:
    return {"retailer": run.tags.get(RETAILER_TAG, "(single retailer)"), "job": run.job_name,
            "partition": _partition(run), "run_id": run.run_id, "run_url": notifier.run_url(run.run_id)}


def _send(context, notifier: AlertNotifier, subject: str, text: str, fields: dict[str, str]) -> None:
    for problem in notifier.send(subject, text, fields):
        context.log.warning(f"alert not delivered: {problem}")


def failure_message(context: dg.RunFailureSensorContext, notifier: AlertNotifier) -> tuple[str, str, dict]:
    run = context.dagster_run
    fields = _fields(run, notifier)
    failures = context.get_step_failure_events()
    if failures:
        first = failures[0]
        error = first.event_specific_data.error if first.event_specific_data else None
        # Dagster wraps the step's exception ("Error occurred while executing op ..."): report the cause.
        while error is not None and error.cause is not None:
            error = error.cause
        fields["step"] = first.step_key or "(run)"
        message = error.message if error else first.message or ""
        if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
            # "N blocking asset checks failed ...", then "asset: check,check" per asset: one step runs all of
            # order_statuses' checks, so the step's name does not say which failed; these lines do.
            message = " ".join(line.strip() for line in message.splitlines() if line.strip())
        fields["error"] = redacted_first_line(message, notifier)
    else:
        fields["step"] = "(run)"
        fields["error"] = redacted_first_line(context.failure_event.message or "", notifier)
    subject = f"ordersync: {fields['job']} failed for {fields['partition']} ({fields['retailer']})"
    text = (f"Run {run.run_id} of {fields['job']} ({fields['retailer']}, partition {fields['partition']}) failed "
            f"in step {fields['step']}: {fields['error']}\n{fields['run_url']}")
    return subject, text, fields


def build_alert_sensors() -> list[dg.SensorDefinition]:
    """The run-failure and recovery sensors; they watch every job of the code location."""
    interval = alert_sensor_seconds()

    @dg.run_failure_sensor(name="alert_on_run_failure", minimum_interval_seconds=interval,
                           default_status=dg.DefaultSensorStatus.RUNNING,
                           description="Sends one message per failed run (webhook and/or e-mail, if configured).")
    def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertNotifier):
        run = context.dagster_run
        if not alerts.enabled:
            return dg.SkipReason("no ORDERSYNC_ALERT_WEBHOOK_URL or ORDERSYNC_ALERT_SMTP_HOST set")
        if run.tags.get("dagster/will_retry") == "true":
            return dg.SkipReason(f"run {run.run_id} will be retried; its last attempt is reported")
        _send(context, alerts, *failure_message(context, alerts))
        return None

    @dg.run_status_sensor(name="alert_on_recovery", run_status=dg.DagsterRunStatus.SUCCESS,
                          minimum_interval_seconds=interval, default_status=dg.DefaultSensorStatus.RUNNING,
                          description="Sends a short 'recovered' message when a job succeeds after its previous "
                                      "run failed.")
    def alert_on_recovery(context: dg.RunStatusSensorContext, alerts: AlertNotifier):
        run = context.dagster_run
        if not alerts.enabled:
            return dg.SkipReason("no ORDERSYNC_ALERT_WEBHOOK_URL or ORDERSYNC_ALERT_SMTP_HOST set")
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=run.job_name,
                                  statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]), limit=20)
        this = next((r for r in records if r.dagster_run.run_id == run.run_id), None)
        earlier = [r for r in records if this is not None and r.storage_id < this.storage_id]
        previous = earlier[0].dagster_run if earlier else None
        if previous is None or previous.status != dg.DagsterRunStatus.FAILURE \
                or previous.tags.get("dagster/will_retry") == "true":
            return dg.SkipReason(f"the run before {run.run_id} of {run.job_name} did not fail (or was retried)")
        fields = {**_fields(run, alerts), "recovered_from_run_id": previous.run_id}
        subject = f"ordersync: {run.job_name} recovered ({fields['retailer']})"
        _send(context, alerts, subject, f"Run {run.run_id} succeeded after the failed run {previous.run_id}.\n"
                                        f"{fields['run_url']}", fields)
        return None

    return [alert_on_run_failure, alert_on_recovery]


def notify_stale(context: dg.SensorEvaluationContext, alerts: AlertNotifier, key: dg.AssetKey,
                 description: str) -> None:
    """The freshness sensor's message when an asset goes stale (freshness.py calls it once per stale episode)."""
    if not alerts.enabled:
        return
    retailer = key.path[0] if len(key.path) > 1 else "(single retailer)"
    fields = {"retailer": retailer, "asset": key.to_user_string(), "check": "updated_within_freshness_window",
              "detail": description, "asset_url": f"{alerts.ui_url.rstrip('/')}/assets/{'/'.join(key.path)}"}
    _send(context, alerts, f"ordersync: {key.to_user_string()} is stale ({retailer})", description, fields)
