"""`ordersync demo --ui` (the README's first command with --ui) clicked through in Chromium as a person would:
its instance and the demo's history (7 mornings' runs, every day materialized), the raw table's described
columns, an "All" backfill (a re-load of every day) from the Materialize dialog, its completion on the
backfills page, the days on the Partitions tab, the lead-time chart on the mart's page after the publish sensor
rebuilt it; then Ctrl-C leaves nothing the demo started running."""

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ordersync_pipeline_tests.browser import chromium_page
from ordersync_pipeline_tests.dagster_deployment import QUICK_DAEMON_ENV, Deployment, free_port, wait_until_serving

pytestmark = pytest.mark.slow

BACKFILL_DAYS = 14  # the demo's days: its partitions start at the first day it loaded


def process_tree(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (process group, start time) of `root` and everything under it, from /proc."""
    parents, info = {}, {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(proc.name)] = int(fields[1])
        info[int(proc.name)] = (int(fields[2]), fields[19])  # pgrp, starttime
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    return {pid: info[pid] for pid in tree if pid in info}


def still_running(processes: dict[int, tuple[int, str]]) -> list[str]:
    """Those of `processes` alive now (same pid and start time), as command lines."""
    alive = []
    for pid, (_, started) in processes.items():
        proc = Path(f"/proc/{pid}")
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[19] == started and fields[0] != "Z":
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                alive.append(f"{pid}: {command[:200]}")
        except OSError:
            continue
    return alive


def left_behind(folder: Path, groups: set[int]) -> list[str]:
    """Live processes working in `folder` (everything the demo starts inherits it) or in one of `groups`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            state, _, group = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            if state != "Z" and (int(group) in groups or Path(os.readlink(proc / "cwd")) == folder):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{proc.name}: {command[:200]}")
        except OSError:
            continue
    return found


def reload_until(page, visible, timeout: float, what: str) -> None:
    """Reload `page` until the locator `visible()` returns is visible (as a person pressing F5 would)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            visible().first.wait_for(state="visible", timeout=5000)
            return
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError; keep reloading until the deadline
            assert time.monotonic() < deadline, f"{what} not shown after {timeout} s"
            page.reload()


@pytest.mark.timeout(600)
def test_a_person_backfills_in_the_demo_ui_sees_the_days_and_the_chart_and_stopping_leaves_nothing(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDERSYNC_", "DAGSTER_"))}
    env["ORDERSYNC_PUBLISH_SENSOR_SECONDS"] = QUICK_DAEMON_ENV["ORDERSYNC_PUBLISH_SENSOR_SECONDS"]
    with log.open("w") as output:
        # Its own process group, as a terminal gives it; Ctrl-C is SIGINT to that group.
        demo = subprocess.Popen([sys.executable, "-m", "ordersync_pipeline.cli", "demo", "--ui", "--port", str(port),
                                 "--orders-per-day", "40"], cwd=tmp_path, env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)
    started: dict[int, tuple[int, str]] = {}
    ui = None
    try:
        wait_until_serving(url, demo, log, timeout=240)
        assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").exists()
        # It opens with the demo's history: its 7 mornings' runs, every day since the first loaded one materialized.
        ui = Deployment(url, tmp_path)
        ui.wait_until_code_loaded()
        stats = ui.graphql("""{ assetNodes(assetKeys: [{path: ["order_statuses"]}]) {
            partitionKeys partitionStats { numMaterialized numPartitions } } }""")["assetNodes"][0]
        mornings = ui.graphql("""{ runsOrError(filter: {pipelineName: "daily_order_sync", statuses: [SUCCESS]}) {
            ... on Runs { results { runId } } } }""")["runsOrError"]["results"]
        assert stats["partitionStats"] == {"numMaterialized": BACKFILL_DAYS, "numPartitions": BACKFILL_DAYS}
        today = dt.datetime.now(dt.timezone.utc).date()
        assert stats["partitionKeys"][0] == (today - dt.timedelta(days=BACKFILL_DAYS)).isoformat()
        assert len(mornings) == 7
        with chromium_page(tmp_path / "screenshots") as steps:
            page = steps.page
            page.goto(f"{url}/assets/order_statuses")
            page.get_by_role("button", name="Skip").click(timeout=60_000)  # "Join the Dagster community"
            # Its columns, described as in the DuckDB file: declared on the asset.
            page.get_by_text("The line's own id (unique per row)", exact=True).first.wait_for(timeout=30_000)
            steps.shot("order_statuses")
            # One code location name however the UI is started (workspace.yaml names it ordersync_pipeline).
            page.locator("a[href='/locations/ordersync_pipeline/jobs/daily_order_sync']").first.wait_for()

            # The demo's history is there before anyone clicks: every day materialized, nothing missing.
            page.goto(f"{url}/assets/order_statuses?view=partitions")
            page.get_by_text(f"Materialized ({BACKFILL_DAYS})", exact=True).wait_for(timeout=60_000)
            assert page.get_by_text("Missing (0)", exact=True).is_visible()
            steps.shot("history-materialized")

            page.goto(f"{url}/assets/order_statuses")
            page.get_by_role("button", name="Materialize…").click()
            page.get_by_role("button", name="All", exact=True).click()
            page.get_by_text(f"{BACKFILL_DAYS} partitions", exact=True).first.wait_for()
            steps.shot("materialize-all")
            page.get_by_role("button", name="Launch backfill").click()
            page.get_by_role("button", name="Launch backfill").wait_for(state="detached")
            steps.shot("launched")

            page.goto(f"{url}/overview/backfills")
            page.get_by_text(f"{BACKFILL_DAYS} partitions", exact=True).first.wait_for()
            started = process_tree(demo.pid)  # dagster dev, webserver, daemon, code servers, the backfill's run
            # Waited for through the API the UI reads, then shown: a person pressing F5 every few seconds
            # made Chromium load Dagster's UI ~10 times over (a third of the machine's CPU in this test).
            (backfill,) = ui.graphql("""{ partitionBackfillsOrError(limit: 1) {
                ... on PartitionBackfills { results { id } } } }""")["partitionBackfillsOrError"]["results"]
            assert ui.wait_for_backfill(backfill["id"], timeout=300) == "COMPLETED_SUCCESS"
            page.reload()
            reload_until(page, lambda: page.get_by_text("Success", exact=True), 60, "the backfill's Success")
            steps.shot("backfill-completed")

            page.goto(f"{url}/assets/order_statuses?view=partitions")
            page.get_by_text(f"Materialized ({BACKFILL_DAYS})", exact=True).wait_for()
            assert page.get_by_text("Failed (0)", exact=True).is_visible()
            steps.shot("partitions")

            # The publish sensor (a 5 s tick here, 30 s as shipped) rebuilds the marts after the backfill.
            (backfill_run,) = ui.backfill_runs(backfill["id"])
            (publish,) = ui.wait_for_runs(("ordersync/published_after_run", backfill_run["runId"]), 1, timeout=240)
            assert publish["status"] == "SUCCESS", f"the publishing run failed; logs in {tmp_path}"
            page.goto(f"{url}/assets/delivery_lead_times")
            chart_row = page.locator("tr").filter(has_text="lead_time_distribution")
            reload_until(page, lambda: chart_row, 60, "delivery_lead_times' lead_time_distribution")
            chart_row.get_by_text("[Show Markdown]").click()  # Dagster shows long Markdown in a dialog
            chart = page.get_by_role("dialog").get_by_role("img", name="Lead time by carrier, with p50 and p90")
            chart.wait_for()
            steps.shot("lead-time-chart")
            width, height = chart.evaluate("image => [image.naturalWidth, image.naturalHeight]")
            assert width > 0 and height > 0, "the chart image did not load"
            assert chart.bounding_box()["width"] > 300
        started.update(process_tree(demo.pid))
    finally:
        if ui is not None:
            ui.http.close()
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        try:
            demo.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            raise
    groups = {group for group, _ in started.values()}  # the demo's, and dagster dev's own
    deadline = time.monotonic() + 30
    while (still_running(started) or left_behind(tmp_path, groups)) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(started) >= 4 and len(groups) >= 2  # the demo, dagster dev, its webserver and daemon at least
    assert still_running(started) == []
    assert left_behind(tmp_path, groups) == []
    output = log.read_text()
    assert "Warning" not in output, output[-3000:]  # no BetaWarning, SupersessionWarning, ...
    compute_logs = list((tmp_path / "data" / "dagster_home" / "storage").rglob("*.err"))
    assert compute_logs and not [p for p in compute_logs if "Warning" in p.read_text()]
