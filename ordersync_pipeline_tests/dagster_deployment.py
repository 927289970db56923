"""Start a code server, dagster-webserver and dagster-daemon on loopback as the README's production section does,
drive them through GraphQL, stop them all."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import httpx
import yaml

from ordersync_pipeline.cli import INSTANCE_CONFIG
from ordersync_pipeline.orchestration.freshness import FRESHNESS_CHECK_NAME
from ordersync_pipeline_tests.support import README, ROOT

CODE_SERVER_WORKSPACE = INSTANCE_CONFIG.with_name("workspace-code-server.yaml")

# The daemon's waits, shortened for tests; what the product ships keeps Dagster's defaults. The run queue is
# looked at every second (Dagster: 5 s), the publish-after-backfills sensor every 5 s (ours: 30 s) and the
# freshness daemon every 2 s (Dagster: 30 s). The backfill daemon's 30 s loop has no setting.
QUICK_DEQUEUE_SECONDS = 1
QUICK_DAEMON_ENV = {"ORDERSYNC_PUBLISH_SENSOR_SECONDS": "5", "FRESHNESS_DAEMON_INTERVAL_SECONDS": "2"}
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")  # a run's statuses once it has ended


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Own process group with SIGINT restored, so the whole tree can be stopped (see the stack notes).
    with log.open("w") as output:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop(process: subprocess.Popen) -> None:
    """SIGINT to the process's group, then SIGKILL; the group even when its leader has exited already (a code
    server's gRPC child and runs would outlive it)."""
    signals = ((signal.SIGKILL, 10),) if process.poll() is not None else ((signal.SIGINT, 20), (signal.SIGKILL, 10))
    for sig, grace in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll the Dagster webserver at `url` until it answers, failing early (with its log) if `process` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/server_info", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, f"{process.args[:4]} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the Dagster UI did not come up within {timeout:g} s:\n" \
                                            f"{log.read_text()[-3000:]}"
        time.sleep(1)


class Deployment:
    def __init__(self, url: str, logs: Path):
        self.url, self.logs = url, logs
        self.http = httpx.Client(base_url=url, timeout=60)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = self.http.post("/graphql", json={"query": query, "variables": variables or {}})
        # The webserver answers 500 when a resolver caught a Python error; its body names the error.
        assert response.status_code == 200, f"GraphQL {response.status_code}: {response.text[:3000]}"
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_until_code_loaded(self, timeout: float = 120, code_server: subprocess.Popen | None = None) -> None:
        """Until the code location has loaded; fails with Dagster's own error if it could not load. A code
        server still starting is waited for (the webserver reconnects to it by itself); one that exited fails
        at once, with its log."""
        deadline = time.monotonic() + timeout
        while True:
            if code_server is not None:
                log = self.logs / "code_server.log"
                assert code_server.poll() is None, f"the code server exited:\n{log.read_text()[-3000:]}"
            entries = self.graphql("""{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
                locationOrLoadError { __typename ... on PythonError { message } } } } } }""")["workspaceOrError"]
            entries = entries.get("locationEntries") or []
            errors = [e["locationOrLoadError"] for e in entries
                      if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
            starting = [e for e in errors if "DagsterUserCodeUnreachableError" in e["message"]]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries) and not starting:
                assert not errors, f"the code location did not load: {errors}; logs in {self.logs}"
                return
            assert time.monotonic() < deadline, f"the code location did not load within {timeout:g} s: {entries}; " \
                                                f"logs in {self.logs}"
            time.sleep(1)

    def repository(self) -> dict:
        data = self.graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
        node = data["repositoriesOrError"]["nodes"][0]
        return {"repositoryName": node["name"], "repositoryLocationName": node["location"]["name"]}

    def launch_backfill(self, params: dict) -> str:
        data = self.graphql("""
            mutation($params: LaunchBackfillParams!) {
              launchPartitionBackfill(backfillParams: $params) {
                __typename
                ... on LaunchBackfillSuccess { backfillId }
                ... on PythonError { message }
                ... on InvalidStepError { invalidStepKey }
                ... on UnauthorizedError { message }
              }
            }""", {"params": params})
        result = data["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def launch_partition_run(self, job: str, partition: str, tags: dict[str, str]) -> str:
        """What the UI's Launch run does for one partition of a job."""
        data = self.graphql("""
            mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
              __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
              ... on RunConfigValidationInvalid { errors { message } } } }""",
                            {"params": {"selector": {**self.repository(), "jobName": job},
                                        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in
                                                                       {**tags, "dagster/partition": partition}.items()]}}})
        result = data["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def _poll(self, probe, timeout: float, what: str, interval: float = 2):
        """probe()'s first truthy answer, asked every `interval` s; fails after `timeout` s naming `what`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answer := probe():
                return answer
            time.sleep(interval)
        raise AssertionError(f"{what} after {timeout} s; logs in {self.logs}")

    def wait_for_runs(self, tag: tuple[str, str], count: int, timeout: float) -> list[dict]:
        def finished() -> list[dict] | None:
            runs = self.runs_tagged(*tag)
            return runs if len(runs) == count and all(r["status"] in FINISHED for r in runs) else None
        return self._poll(finished, timeout, f"runs tagged {tag} not finished")

    def wait_until_dequeued(self, run_id: str, timeout: float) -> None:
        """Until the daemon has taken the run from the queue (started, or already finished)."""
        query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
        def dequeued() -> bool:
            return self.graphql(query, {"id": run_id})["runOrError"]["status"] not in ("QUEUED", "NOT_STARTED")
        self._poll(dequeued, timeout, f"run {run_id} still queued", interval=0.5)

    def wait_for_backfill_runs(self, backfill_id: str, count: int, timeout: float) -> list[dict]:
        """The backfill's runs once `count` of them have finished. The backfill's own status changes only at the
        daemon's next pass (every 30 s, no setting), so tests that go on from the runs wait for it later."""
        return self.wait_for_runs(("dagster/backfill", backfill_id), count, timeout)

    def wait_for_backfill(self, backfill_id: str, timeout: float) -> str:
        def finished() -> str | None:
            data = self.graphql("""
                query($id: String!) { partitionBackfillOrError(backfillId: $id) {
                  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }""",
                                {"id": backfill_id})
            status = data["partitionBackfillOrError"].get("status")
            if status not in ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED", "COMPLETED"):
                return None
            runs = self.backfill_runs(backfill_id)
            return status if status != "COMPLETED" or all(r["status"] in FINISHED for r in runs) else None
        return self._poll(finished, timeout, f"backfill {backfill_id} not finished")

    def backfill_runs(self, backfill_id: str) -> list[dict]:
        return self.runs_tagged("dagster/backfill", backfill_id)

    def runs_tagged(self, key: str, value: str) -> list[dict]:
        data = self.graphql("""
            query($key: String!, $value: String!) {
              runsOrError(filter: {tags: [{key: $key, value: $value}]}, limit: 500) {
                ... on Runs { results { runId status creationTime startTime endTime } } } }""",
                            {"key": key, "value": value})
        return data["runsOrError"]["results"]


def quicken_instance(dagster_home: Path) -> None:
    """DAGSTER_HOME/dagster.yaml (the shipped one, copied by the test, or none) with the run queue's quick
    interval: through the QueuedRunCoordinator's config where the file names it, else through `run_queue`."""
    config_file = dagster_home / "dagster.yaml"
    config = (yaml.safe_load(config_file.read_text()) if config_file.exists() else None) or {}
    if "run_coordinator" in config:
        config["run_coordinator"].setdefault("config", {})["dequeue_interval_seconds"] = QUICK_DEQUEUE_SECONDS
    else:
        config.setdefault("run_queue", {})["dequeue_interval_seconds"] = QUICK_DEQUEUE_SECONDS
    config_file.write_text(yaml.safe_dump(config))


def production_commands(workspace: str, code_port: int) -> list[list[str]]:
    """The README's production commands (code server, webserver, daemon) as given, with this deployment's
    workspace file and code server port, run from this Python's bin folder."""
    block = README.split("## Running in production", 1)[1].split("```", 2)[1]
    commands = [line.split() for line in block.strip().splitlines()]
    shipped = str(CODE_SERVER_WORKSPACE.relative_to(ROOT))
    assert [c[0] for c in commands] == ["dagster", "dagster-webserver", "dagster-daemon"], commands
    # The README's code server listens where the shipped workspace file points the webserver and the daemon.
    (entry,) = yaml.safe_load(CODE_SERVER_WORKSPACE.read_text())["load_from"]
    shipped_port = str(entry["grpc_server"]["port"])
    assert commands[0][commands[0].index("-p") + 1] == shipped_port, (commands[0], shipped_port)
    assert commands[1][1:] == ["-w", shipped] and commands[2][1:] == ["run", "-w", shipped], commands
    python_bin = Path(sys.executable).parent
    return [[str(python_bin / c[0]), *[{shipped: workspace, shipped_port: str(code_port)}.get(a, a) for a in c[1:]]]
            for c in commands]


def code_server_workspace(dagster_home: Path, port: int) -> Path:
    """The shipped workspace-code-server.yaml with the code server's port, in DAGSTER_HOME."""
    workspace = yaml.safe_load(CODE_SERVER_WORKSPACE.read_text())
    (entry,) = workspace["load_from"]
    entry["grpc_server"]["port"] = port
    path = dagster_home / "workspace.yaml"
    path.write_text(yaml.safe_dump(workspace))
    return path


@contextmanager
def running_deployment(dagster_home: Path, env: dict[str, str]):
    """One code server, dagster-webserver and dagster-daemon for our code location, as the README's production
    section runs them, with DAGSTER_HOME (its dagster.yaml as the test wrote it, quickened); stopped on exit."""
    port, code_port = free_port(), free_port()
    env = {**QUICK_DAEMON_ENV, **env, "DAGSTER_HOME": str(dagster_home)}
    quicken_instance(dagster_home)
    workspace = str(code_server_workspace(dagster_home, code_port))
    python_bin = Path(sys.executable).parent
    # Webserver and daemon started together on fresh storage both create its tables and stamp its schema
    # version; on a loaded machine both stamps land and every later start fails with "Version table
    # 'alembic_version' has more than one head present". The README's deployment steps do the same.
    subprocess.run([str(python_bin / "dagster"), "instance", "migrate"], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    code_server_command, webserver_command, daemon_command = production_commands(workspace, code_port)
    started: list[subprocess.Popen] = []  # stopped last first: daemon, webserver, code server
    deployment = Deployment(f"http://127.0.0.1:{port}", dagster_home)
    try:
        started.append(code_server := _start(code_server_command, env, dagster_home / "code_server.log"))
        started.append(webserver := _start([*webserver_command, "-h", "127.0.0.1", "-p", str(port)], env,
                                           dagster_home / "webserver.log"))
        wait_until_serving(deployment.url, webserver, dagster_home / "webserver.log")
        deployment.wait_until_code_loaded(code_server=code_server)
        # Started once the code location answers, so the daemon's first passes (run queue, sensors, backfills)
        # find it loaded rather than unreachable.
        started.append(_start(daemon_command, env, dagster_home / "daemon.log"))
        yield deployment
    finally:
        for process in reversed(started):
            _stop(process)
        deployment.http.close()


# Proving the DuckDB pool: steps of runs, in time, from the instance's event log.

def max_overlap(runs: list[dict]) -> int:
    events = sorted([(r["startTime"], 1) for r in runs] + [(r["endTime"], -1) for r in runs])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    return peak


def duckdb_step_intervals(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float, str, str]]:
    """(start, end, run, step) of every step of the runs that opens the DuckDB file: all but the freshness
    checks, which read Dagster's own records and run in no pool."""
    intervals = []
    for run_id in run_ids:
        started = {}
        for event in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                                                         dg.DagsterEventType.STEP_FAILURE}):
            if event.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                started[event.step_key] = event.timestamp
            elif not event.step_key.endswith(FRESHNESS_CHECK_NAME):
                intervals.append((started.pop(event.step_key), event.timestamp, run_id, event.step_key))
    return sorted(intervals)


def overlapping_steps(steps: list[tuple[float, float, str, str]]) -> list[tuple]:
    """Pairs of DuckDB steps of different runs that ran at the same time (steps sorted by start)."""
    overlaps = []
    latest_end: tuple[float, float, str, str] | None = None
    for step in steps:
        if latest_end is not None and step[0] < latest_end[1] and step[2] != latest_end[2]:
            overlaps.append((latest_end, step))
        if latest_end is None or step[1] > latest_end[1]:
            latest_end = step
    return overlaps


def held_for_the_pool(dagster_home: Path, run_ids: list[str]) -> list[str]:
    """Runs the daemon's run queue logged as blocked by the pool's limit (its own words, at info level)."""
    log = (dagster_home / "daemon.log").read_text()
    return [run_id for run_id in run_ids if f"Run {run_id} is blocked by global concurrency limits" in log]


def queued_behind_another(runs: list[dict]) -> list[str]:
    """Runs launched while the run before them was in progress that started only after it had ended: the
    daemon held them in the queue for the pool (the instance would otherwise start up to 4 at once)."""
    ordered = sorted(runs, key=lambda run: run["startTime"])
    return [run["runId"] for before, run in zip(ordered, ordered[1:])
            if run["creationTime"] < before["endTime"] <= run["startTime"]]
