"""Freshness of `order_statuses` and `analyst_database`: is the last good materialization within the window?

Two Dagster mechanisms show it, because the UI shows them in different places:
- a `FreshnessPolicy.time_window` on `analyst_database` (Dagster 1.13's recommended freshness; its daemon
  evaluates it and the asset's page and the asset list show Fresh / Failing). Dagster refuses windows under
  one minute, so the policy's window is at least that. Not on `order_statuses`: Dagster evaluates a policy at
  every partition's event, which cost a year's range run 7 s (46.4 -> 39.5 s without);
- an asset check `updated_within_freshness_window` on each, failing when the last materialization is older
  than `ORDERSYNC_FRESHNESS_HOURS` (default 26: a daily 06:00 run plus two hours' grace). It runs in every run
  that materializes the asset (so the daily job evaluates it), and the sensor `freshness_of_published_data`
  evaluates it between runs and reports the result whenever it changes (no run is launched for that).

"Last good" is Dagster's own record: an asset only materializes when its step succeeded, and
`analyst_database` only runs after the blocking checks passed. What this module does not know: whether the
data is correct, only when it was last written.
"""

import datetime as dt
import json
import time

import dagster as dg

from ordersync_pipeline.orchestration.alerts import AlertNotifier, notify_stale
from ordersync_pipeline.settings import Settings

FRESHNESS_CHECK_NAME = "updated_within_freshness_window"
SENSOR_NAME = "freshness_of_published_data"
# Alerts go out for the analysts' file only: what analysts read is what must not silently age (order_statuses
# goes stale with it, seconds apart, and its check shows that in the UI).
ALERTED = "analyst_database"
_POLICY_MINIMUM = dt.timedelta(minutes=1)  # Dagster's own floor for a time-window policy
# Dagster's SQLite event log stamps a stored check result in whole seconds: one reported in the same second as the
# materialization it judges counts as older than it, and the UI then shows no result for that materialization.
# The sensor leaves a materialization younger than this to its next tick (the run's own check judges it first).
_SETTLE_SECONDS = 1.0


def freshness_window() -> dt.timedelta:
    return dt.timedelta(hours=Settings.from_env().freshness_hours)


def freshness_policy() -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.time_window(fail_window=max(freshness_window(), _POLICY_MINIMUM))


def evaluate(instance: dg.DagsterInstance, asset_key: dg.AssetKey, window: dt.timedelta,
             now: float | None = None) -> tuple[bool, str, dict]:
    """(passed, one-line description, metadata) for `asset_key`'s last materialization against `window`."""
    now = time.time() if now is None else now
    latest = instance.get_latest_materialization_event(asset_key)
    hours = window.total_seconds() / 3600
    if latest is None:
        return False, f"{asset_key.to_user_string()} was never materialized (window {hours:g} h)", {
            "window_hours": hours}
    age = now - latest.timestamp
    partition = latest.asset_materialization.partition if latest.asset_materialization else None
    metadata = {"last_updated": dg.MetadataValue.timestamp(latest.timestamp), "age_hours": round(age / 3600, 3),
                "window_hours": hours, "last_run_id": latest.run_id, "last_partition": partition or ""}
    passed = age <= window.total_seconds()
    when = dt.datetime.fromtimestamp(latest.timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    description = (f"{asset_key.to_user_string()} last updated {when} ({age / 3600:.2f} h ago"
                   f"{', partition ' + partition if partition else ''}): "
                   + ("within" if passed else "older than") + f" the {hours:g} h window")
    return passed, description, metadata


def freshness_checks(asset_keys: list[dg.AssetKey]) -> list[dg.AssetChecksDefinition]:
    """`updated_within_freshness_window` on each of `asset_keys` (the window is read when the definitions load).
    It reads Dagster's records only, so it needs no resource and runs in no pool."""
    window = freshness_window()

    def build(asset_key: dg.AssetKey) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset=asset_key, name=FRESHNESS_CHECK_NAME,
                        description=f"the last materialization is at most ORDERSYNC_FRESHNESS_HOURS "
                                    f"({window.total_seconds() / 3600:g} h) old")
        def updated_within_freshness_window(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
            passed, description, metadata = evaluate(context.instance, asset_key, window)
            return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.ERROR, description=description,
                                       metadata=metadata)

        return updated_within_freshness_window

    return [build(key) for key in asset_keys]


def freshness_sensor(asset_keys: list[dg.AssetKey]) -> dg.SensorDefinition:
    """Evaluates the freshness check of `asset_keys` between runs; reports each result that differs from the
    last one it saw for that asset, and alerts (alerts.py) when the analysts' file goes stale: once per stale
    materialization.
    Its interval is ORDERSYNC_FRESHNESS_SENSOR_SECONDS (default 300)."""
    window = freshness_window()
    interval = Settings.from_env().freshness_sensor_seconds

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=interval, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Fails the freshness check of order_statuses and analyst_database when their last "
                           "materialization is older than ORDERSYNC_FRESHNESS_HOURS, and passes it again after.")
    def freshness_of_published_data(context: dg.SensorEvaluationContext, alerts: AlertNotifier):
        # asset -> [passed, timestamp of the materialization judged]: a new stale episode (another
        # materialization that went stale too) is reported again, the same one never twice.
        seen = json.loads(context.cursor) if context.cursor else {}
        events = []
        now = time.time()
        for key in asset_keys:
            passed, description, metadata = evaluate(context.instance, key, window, now)
            if "last_updated" not in metadata:
                continue  # never materialized: a new deployment, not a stale one (its runs' checks say so)
            updated = metadata["last_updated"].value
            name = key.to_user_string()
            if seen.get(name) == [passed, updated] or now - updated < _SETTLE_SECONDS:
                continue
            seen[name] = [passed, updated]
            events.append(dg.AssetCheckEvaluation(asset_key=key, check_name=FRESHNESS_CHECK_NAME, passed=passed,
                                                  severity=dg.AssetCheckSeverity.ERROR, description=description,
                                                  metadata=metadata))
            if not passed and key.path[-1] == ALERTED:
                notify_stale(context, alerts, key, description)
        return dg.SensorResult(asset_events=events, cursor=json.dumps(seen))

    return freshness_of_published_data

