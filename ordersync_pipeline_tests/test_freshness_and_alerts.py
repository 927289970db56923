"""Freshness and alerts in a real deployment (webserver + daemon running the sensors): a daily run that fails
on a revoked key sends exactly one message to a webhook and one e-mail, naming retailer, job, day, step and
error without the key or the SMTP password; the next good run sends "recovered" and passes the freshness
check; once the publish is older than the (one-minute) window, the check fails — through GraphQL and on the
asset page in Chromium — Dagster's freshness policy shows the asset degraded, and one "stale" message goes out."""

import email
import json
import threading
import time
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline_tests.browser import chromium_page
from ordersync_pipeline_tests.support import duckdb_env
from ordersync_pipeline_tests.dagster_deployment import free_port, running_deployment

pytestmark = pytest.mark.slow

PASSWORD = "smtp-secret-pa55word"
WINDOW_HOURS = 1 / 60  # a minute, Dagster's floor for a FreshnessPolicy: the publish goes stale while the test waits
WINDOW_TEXT = f"older than the {WINDOW_HOURS:g} h window"
DAY = "2025-12-09"


class Received:
    """Messages a receiver got, with a condition to wait on instead of sleeping."""

    def __init__(self):
        self.items, self.changed = [], threading.Condition()

    def add(self, item) -> None:
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float, what: str) -> list:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.items), timeout=timeout):
                raise AssertionError(f"{what} not received within {timeout:g} s; got {self.items}")
            return list(self.items)


@pytest.fixture
def webhook():
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.add(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


@pytest.fixture
def smtp_server():
    received, logins = Received(), []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.add(email.message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == PASSWORD)

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    try:
        yield port, received, logins
    finally:
        controller.stop()


def subject_with(word: str):
    return lambda items: [i for i in items if word in (i["title"] if isinstance(i, dict) else i["Subject"])]


def check_status(deployment, asset: str) -> tuple[str | None, str | None]:
    data = deployment.graphql("""query($path: [String!]!) { assetNodes(assetKeys: [{path: $path}]) {
        assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization {
          status evaluation { description } } } } } } }""", {"path": [asset]})
    checks = data["assetNodes"][0]["assetChecksOrError"]["checks"]
    (execution,) = [c["executionForLatestMaterialization"] for c in checks
                    if c["name"] == "updated_within_freshness_window"]
    if execution is None:
        return None, None
    return execution["status"], (execution["evaluation"] or {}).get("description")


def freshness_status(deployment, asset: str) -> str | None:
    data = deployment.graphql("""query($path: [String!]!) { assetNodes(assetKeys: [{path: $path}]) {
        freshnessStatusInfo { freshnessStatus } } }""", {"path": [asset]})
    info = data["assetNodes"][0]["freshnessStatusInfo"]
    return info and info["freshnessStatus"]


def wait_for_run(deployment, run_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = deployment.graphql("""query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }""",
                                    {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    raise AssertionError(f"run {run_id} not finished within {timeout} s; logs in {deployment.logs}")


def test_failure_recovery_and_stale_publish_alert_once_each(tmp_path, simulator, webhook, smtp_server):
    hook_url, hooks = webhook
    smtp_port, mails, logins = smtp_server
    ui_url = "http://ui.example:3000"
    env = {**{k: v for k, v in __import__("os").environ.items() if not k.startswith("ORDERSYNC_")},
           **duckdb_env(str(tmp_path / "ordersync.duckdb")),
           "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": simulator.base_url,
           "ORDERSYNC_FRESHNESS_HOURS": str(WINDOW_HOURS), "ORDERSYNC_FRESHNESS_SENSOR_SECONDS": "2",
           "ORDERSYNC_ALERT_SENSOR_SECONDS": "2", "ORDERSYNC_ALERT_WEBHOOK_URL": hook_url,
           "ORDERSYNC_ALERT_SMTP_HOST": "127.0.0.1", "ORDERSYNC_ALERT_SMTP_PORT": str(smtp_port),
           "ORDERSYNC_ALERT_SMTP_USER": "pipeline", "ORDERSYNC_ALERT_SMTP_PASSWORD": PASSWORD,
           "ORDERSYNC_ALERT_SMTP_FROM": "pipeline@example.com", "ORDERSYNC_ALERT_SMTP_TO": "ops@example.com",
           "ORDERSYNC_ALERT_SMTP_STARTTLS": "false", "ORDERSYNC_UI_URL": ui_url}
    # Few, quick retries: the revoked key is a 401, which the client does not retry anyway.
    home = tmp_path / "dagster_home"
    home.mkdir()
    with running_deployment(home, env) as deployment:
        # 1. The key is revoked: the simulator answers 401 to it.
        simulator.retailers_by_key = {"pk_test_another_key": simulator}
        failed = deployment.launch_partition_run("daily_order_sync", DAY, {})
        assert wait_for_run(deployment, failed) == "FAILURE"
        failure_hooks = hooks.wait_for(subject_with("failed"), 120, "the failure webhook")
        failure_mails = mails.wait_for(subject_with("failed"), 120, "the failure e-mail")

        # 2. The key works again: the next run succeeds, says "recovered" and passes the freshness check.
        simulator.retailers_by_key = {SIMULATOR_API_KEY: simulator}
        good = deployment.launch_partition_run("daily_order_sync", DAY, {})
        assert wait_for_run(deployment, good) == "SUCCESS"
        published_at = time.monotonic()
        assert check_status(deployment, "analyst_database")[0] == "SUCCEEDED"  # a fresh publish passes
        assert check_status(deployment, "order_statuses")[0] == "SUCCEEDED"
        hooks.wait_for(subject_with("recovered"), 120, "the recovered webhook")
        mails.wait_for(subject_with("recovered"), 120, "the recovered e-mail")

        # 3. No run for longer than the window: the sensor fails the check, and one "stale" message goes out.
        stale_hooks = hooks.wait_for(subject_with("stale"), 240, "the stale webhook")
        mails.wait_for(subject_with("stale"), 60, "the stale e-mail")
        assert time.monotonic() - published_at >= WINDOW_HOURS * 3600 * 0.9
        # The sensor sends its messages while it evaluates; the daemon stores the result right after.
        deadline = time.monotonic() + 60
        while (status := check_status(deployment, "analyst_database"))[0] != "FAILED" and time.monotonic() < deadline:
            time.sleep(1)
        assert status[0] == "FAILED" and WINDOW_TEXT in status[1], status
        # Dagster's freshness daemon judges the asset's FreshnessPolicy by the same window: the UI shows it failing.
        deadline = time.monotonic() + 150
        while (freshness := freshness_status(deployment, "analyst_database")) != "DEGRADED" \
                and time.monotonic() < deadline:
            time.sleep(2)
        assert freshness == "DEGRADED", freshness
        with chromium_page(tmp_path / "screenshots") as steps:
            page = steps.page
            page.goto(f"{deployment.url}/assets/analyst_database?view=checks")
            skip = page.get_by_role("button", name="Skip")
            try:
                skip.click(timeout=10_000)  # the first visit's community modal
            except Exception:  # noqa: BLE001 - not shown this time
                pass
            # The check's latest execution: its description and the Failed badge (the check list truncates names).
            page.get_by_text(WINDOW_TEXT).first.wait_for(timeout=60_000)
            page.get_by_text("Failed", exact=True).first.wait_for(timeout=60_000)
            steps.shot("stale-check-failed")
        time.sleep(5)  # a few more sensor ticks: still one stale message, no new failure or recovery message

    bodies = hooks.items
    assert len(subject_with("failed")(bodies)) == 1 and len(subject_with("recovered")(bodies)) == 1
    assert len(subject_with("stale")(stale_hooks)) == len(subject_with("stale")(bodies)) == 1
    assert len(subject_with("failed")(mails.items)) == 1 and len(subject_with("recovered")(mails.items)) == 1
    assert len(subject_with("stale")(mails.items)) == 1
    (failure,) = failure_hooks
    fields = failure["fields"]
    assert fields["retailer"] == "(single retailer)" and fields["job"] == "daily_order_sync"
    assert fields["partition"] == DAY and fields["step"] == "order_statuses"
    assert "refused the API key" in fields["error"], fields["error"]  # the cause, not Dagster's wrapper
    assert fields["run_url"] == f"{ui_url}/runs/{failed}" and fields["run_url"] in failure["text"]
    (mail,) = failure_mails
    mail_text = mail.get_content()
    for value in (DAY, "daily_order_sync", "order_statuses", fields["error"], fields["run_url"]):
        assert value in mail_text
    everything = json.dumps(bodies) + "".join(m.as_string() for m in mails.items)
    assert SIMULATOR_API_KEY not in everything and PASSWORD not in everything
    assert logins and all(login == ("pipeline", PASSWORD) for login in logins)
    for log in ("code_server.log", "webserver.log", "daemon.log"):  # sensors send the alerts from the code server
        assert PASSWORD not in (home / log).read_text()
