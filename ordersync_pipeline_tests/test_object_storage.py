"""The analysts' file in object storage (ORDERSYNC_PUBLISH_URL): every publish a version, the URL the latest,
opened by a DuckDB 1.4.4 analyst with httpfs; failures leave the last good version; no credential leaks.

Everything runs against moto's S3 server on 127.0.0.1 (object_store.py); nothing reaches the internet.
"""

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.cli import main
from ordersync_pipeline.definitions import build_many_retailers_definitions
from ordersync_pipeline.storage.object_storage import UploadError, PublishSettingError, list_versions, upload_snapshot
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse, resources_from_env
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline_tests.object_store import RemoteAnalyst, S3Server
from ordersync_pipeline_tests.support import files_containing, run_daily

BUCKET = "analytics"
URL = f"s3://{BUCKET}/acme/ordersync.duckdb"
LATEST_KEY = "acme/ordersync.duckdb"
VERSIONS = "acme/ordersync/snapshots/"


@pytest.fixture
def s3(monkeypatch):
    server = S3Server()
    server.create_bucket(BUCKET)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def publishing(resources: dict, url: str = URL, keep: int = 30) -> dict:
    warehouse = resources["warehouse"]
    return {**resources, "warehouse": OrderSyncWarehouse(database=warehouse.database,
                                                         analyst_database=warehouse.analyst_database,
                                                         publish_url=url, publish_keep=keep)}


def local_counts(path: str) -> dict[str, int]:
    with duckdb.connect(path, read_only=True) as conn:
        tables = [t for (t,) in conn.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in tables}


def remote_counts(analyst: RemoteAnalyst, alias: str) -> dict[str, int]:
    tables = [t for (t,) in analyst.ask(f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{alias}' "
                                        "ORDER BY 1")]
    return {t: analyst.ask(f'SELECT count(*) FROM {alias}."{t}"')[0][0] for t in tables}


# --- settings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, says", [
    ({"ORDERSYNC_PUBLISH_URL": "ftp://analytics/ordersync.duckdb"}, "ORDERSYNC_PUBLISH_URL=ftp://analytics/ordersync.duckdb: unknown scheme"),
    ({"ORDERSYNC_PUBLISH_URL": "analytics/ordersync.duckdb"}, "unknown scheme (none)"),
    ({"ORDERSYNC_PUBLISH_URL": "s3:///ordersync.duckdb"}, "no bucket"),
    ({"ORDERSYNC_PUBLISH_URL": "s3://analytics/ordersync.parquet"}, "must name a .duckdb file"),
    ({"ORDERSYNC_PUBLISH_URL": "s3://analytics"}, "must name a .duckdb file"),
    ({"ORDERSYNC_PUBLISH_URL": "s3://AKIAX:S3CRET@analytics/o.duckdb"}, "ORDERSYNC_PUBLISH_URL: the URL holds a password"),
    ({"ORDERSYNC_PUBLISH_URL": URL, "AWS_ENDPOINT_URL": "http://minio.internal:9000"},
     "AWS_ENDPOINT_URL=http://minio.internal:9000 is plain http to a host other than loopback"),
    ({"ORDERSYNC_PUBLISH_URL": URL, "ORDERSYNC_PUBLISH_KEEP": "0"}, "ORDERSYNC_PUBLISH_KEEP must be a whole number >= 1"),
])
def test_a_bad_publish_setting_is_refused_when_the_definitions_load(monkeypatch, env, says):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as raised:
        resources_from_env()
    message = str(raised.value)
    assert says in message and "\n" not in message
    assert message.startswith(("ORDERSYNC_PUBLISH_URL", "ORDERSYNC_PUBLISH_KEEP"))


def test_publish_urls_per_retailer_and_loopback_http(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")  # loopback http is allowed, as for the API
    assert resources_from_env()["warehouse"].publish_url is None  # unset: the local file only, as before
    monkeypatch.setenv("ORDERSYNC_PUBLISH_URL", "s3://analytics/team/ordersync.duckdb")
    assert resources_from_env()["warehouse"].publish_url == "s3://analytics/team/ordersync.duckdb"
    assert resources_from_env("acme")["warehouse"].publish_url == "s3://analytics/team/acme/ordersync.duckdb"
    monkeypatch.setenv("ORDERSYNC_PUBLISH_URL_GLOBEX", "gs://globex-bucket/orders.duckdb")
    assert resources_from_env("globex")["warehouse"].publish_url == "gs://globex-bucket/orders.duckdb"
    monkeypatch.setenv("ORDERSYNC_PUBLISH_URL_GLOBEX", "s3://globex-bucket/orders.csv")
    with pytest.raises(PublishSettingError, match="^ORDERSYNC_PUBLISH_URL_GLOBEX=s3://globex-bucket/orders.csv: "):
        resources_from_env("globex")
    assert resources_from_env("acme")["warehouse"].publish_keep == 30


@pytest.mark.slow
def test_a_bad_publish_url_stops_the_definitions_loading_before_anything_is_written(tmp_path):
    env = {**os.environ, "ORDERSYNC_API_KEY_ACME": "pk_live_x", "ORDERSYNC_RETAILERS": "acme",
           "ORDERSYNC_DUCKDB_PATH": str(tmp_path / "o.duckdb"), "ORDERSYNC_PUBLISH_URL": URL,
           "ORDERSYNC_PUBLISH_URL_ACME": "s3://analytics/acme.parquet"}
    env.pop("DAGSTER_HOME", None)
    completed = subprocess.run([sys.executable, "-c", "import ordersync_pipeline.definitions"], capture_output=True,
                               text=True, timeout=120, env=env, cwd=tmp_path)
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines()[-1].endswith(
        "ORDERSYNC_PUBLISH_URL_ACME=s3://analytics/acme.parquet: the URL must name a .duckdb file inside the bucket, "
        "e.g. s3://analytics/ordersync/ordersync.duckdb")
    assert list(tmp_path.iterdir()) == []


# --- publishing and retention ----------------------------------------------------------------------------

def small_database(path: Path, version: int) -> str:
    with duckdb.connect(str(path)) as conn:
        conn.execute(f"CREATE TABLE lines AS SELECT i, {version} AS v FROM range(1000) r(i)")
    return str(path)


def test_after_keep_plus_two_publishes_exactly_the_newest_keep_versions_remain(s3, tmp_path):
    keep, first = 3, dt.datetime(2026, 12, 4, 6, 0, 12, tzinfo=dt.timezone.utc)
    published = []
    for n in range(keep + 2):
        local = small_database(tmp_path / f"v{n}.duckdb", n)
        uploaded = upload_snapshot(local, URL, first + dt.timedelta(days=n), keep=keep)
        published.append(uploaded.version_url)
        assert s3.objects(BUCKET, LATEST_KEY)[LATEST_KEY] == Path(local).read_bytes()  # the URL is the latest
    assert published[0] == "s3://analytics/acme/ordersync/snapshots/20261204T060012Z.duckdb"
    assert list_versions(URL) == published[-keep:] == uploaded.versions_kept
    assert uploaded.versions_deleted == [published[1]]  # each publish deletes what fell out of the newest `keep`
    assert sorted(s3.objects(BUCKET, VERSIONS)) == [url.removeprefix(f"s3://{BUCKET}/") for url in published[-keep:]]
    assert s3.objects(BUCKET, VERSIONS)[VERSIONS + "20261208T060012Z.duckdb"] == Path(local).read_bytes()
    # A version is never overwritten, not even by a publish within the same second.
    before = s3.objects(BUCKET)
    with pytest.raises(UploadError, match="exists already"):
        upload_snapshot(small_database(tmp_path / "again.duckdb", 99), URL, first + dt.timedelta(days=keep + 1))
    assert s3.objects(BUCKET) == before


def test_a_store_failing_a_few_writes_is_retried_with_backoff_and_the_publish_succeeds(s3, tmp_path):
    local = small_database(tmp_path / "v.duckdb", 1)
    retries = []
    s3.writes_to_fail = 4  # more than obstore's own retries of one request: tenacity retries the step
    uploaded = upload_snapshot(local, URL, dt.datetime(2026, 12, 4, 6, tzinfo=dt.timezone.utc), on_retry=retries.append)
    assert s3.writes_to_fail <= 0 and s3.objects(BUCKET, LATEST_KEY)[LATEST_KEY] == Path(local).read_bytes()
    assert uploaded.versions_kept == [uploaded.version_url]
    assert len(retries) == 1 and retries[0].startswith(f"upload the new version for {URL} failed (attempt 1 of 4): "
                                                       "HTTP 500 InternalError")
    assert s3.secret not in retries[0]


@pytest.mark.slow
def test_daily_runs_publish_versions_that_a_duckdb_1_4_analyst_attaches_from_s3(s3, simulator, resources, published,
                                                                               tmp_path, capsys):
    result = run_daily(publishing(resources), "2025-12-08")
    assert result.success
    metadata = result.asset_materializations_for_node("analyst_database")[0].metadata
    first_version = metadata["version_url"].value
    assert metadata["published_url"].value == URL
    assert first_version.startswith(f"s3://{BUCKET}/{VERSIONS}") and first_version.endswith("Z.duckdb")
    assert metadata["uploaded_size_mb"].value == round(os.path.getsize(published) / 1e6, 2)
    assert metadata["upload_seconds"].value >= 0 and metadata["versions_kept"].value == 1
    objects = s3.objects(BUCKET)
    assert objects[LATEST_KEY] == objects[first_version.removeprefix(f"s3://{BUCKET}/")] == Path(published).read_bytes()
    with duckdb.connect(published, read_only=True) as conn:  # the version's name is its published_at
        published_at = conn.execute("SELECT published_at FROM published_snapshot").fetchall()[0][0]
    assert first_version.endswith(published_at.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ.duckdb"))

    analyst = RemoteAnalyst(s3)
    try:
        analyst.ask(f"ATTACH '{URL}' AS latest (READ_ONLY)")
        analyst.ask(f"ATTACH '{first_version}' AS first (READ_ONLY)")
        assert remote_counts(analyst, "latest") == local_counts(published) == remote_counts(analyst, "first")
        assert local_counts(published)["order_statuses"] > 0
        first_answer = analyst.ask("SELECT count(*), max(order_day)::VARCHAR FROM first.order_statuses")
        assert analyst.ask("SELECT as_of_day::VARCHAR FROM first.published_snapshot") == [["2025-12-08"]]
        analyst.ask("DETACH latest")

        simulator.clock.advance(days=1)
        second = run_daily(publishing(resources), "2025-12-09")
        assert second.success
        second_version = second.asset_materializations_for_node("analyst_database")[0].metadata["version_url"].value
        listed = [row[0] for row in analyst.ask(f"SELECT file FROM glob('s3://{BUCKET}/{VERSIONS}*.duckdb') ORDER BY 1")]
        assert listed == [first_version, second_version]
        # The session attached to the first version keeps its answers; a new attach of the URL sees the new data.
        assert analyst.ask("SELECT count(*), max(order_day)::VARCHAR FROM first.order_statuses") == first_answer
        analyst.ask(f"ATTACH '{URL}' AS latest (READ_ONLY)")
        assert analyst.ask("SELECT as_of_day::VARCHAR FROM latest.published_snapshot") == [["2025-12-09"]]
        assert remote_counts(analyst, "latest") == local_counts(published)
    finally:
        analyst.close()

    # ordersync report reads a published snapshot straight from the store.
    output = tmp_path / "remote-report.html"
    assert main(["report", "--database", URL, "--output", str(output)]) == 0
    capsys.readouterr()
    page = output.read_text()
    assert f'<code id="source">{URL}</code>' in page and "2025-12-09" in page
    assert main(["report", "--database", f"s3://{BUCKET}/acme/missing.duckdb", "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --database s3://analytics/acme/missing.duckdb: downloading") and error.count("\n") == 1


def snapshot_database(path: Path, version: int, rows: int) -> str:
    """A DuckDB file in the 1.4 storage format whose every row carries `version` (rows barely compress)."""
    with duckdb.connect() as conn:
        conn.execute(f"ATTACH '{path}' AS f (STORAGE_VERSION 'v1.4.0')")
        conn.execute(f"CREATE TABLE f.lines AS SELECT i, {version} AS v, md5(i::VARCHAR || '{version}') AS h, "
                     f"md5(h) AS h2 FROM range({rows}) r(i)")
        conn.execute(f"CREATE TABLE f.info AS SELECT {version} AS v, {rows} AS n")
    return str(path)


@pytest.mark.slow
def test_a_session_attached_to_the_url_never_mixes_versions_when_the_object_is_replaced(s3, tmp_path):
    """Measured: the replacement is larger than the session's DuckDB cache (memory_limit 16MB, files of 18 and
    24 MB), so later queries must read blocks again. httpfs notices the object's ETag changed and refuses
    those reads; what is still cached answers from the old version. Never new or mixed rows."""
    old = snapshot_database(tmp_path / "old.duckdb", 1, 500_000)
    new = snapshot_database(tmp_path / "new.duckdb", 2, 650_000)
    upload_snapshot(old, URL, dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.timezone.utc))
    analyst = RemoteAnalyst(s3, memory_limit="16MB")
    scan = "SELECT min(v), max(v), count(*), sum(hash(h)), sum(hash(h2)) FROM db.lines"  # ~32 MB of strings
    try:
        analyst.ask(f"ATTACH '{URL}' AS db (READ_ONLY)")
        before = analyst.ask(scan)
        assert before[0][:3] == [1, 1, 500_000]
        upload_snapshot(new, URL, dt.datetime(2026, 12, 4, 7, 0, tzinfo=dt.timezone.utc))
        outcomes = [analyst.answer(scan) for _ in range(3)] + [analyst.answer("SELECT v, n FROM db.info")]
        print("held session after the replace:", [o.get("rows") or o["error"][:120] for o in outcomes])
        for outcome in outcomes:
            if "error" in outcome:
                assert "ETag" in outcome["error"] and "changed" in outcome["error"]
            else:
                assert outcome["rows"] in (before, [[1, 500_000]])  # the old version, whole
        assert any("error" in o for o in outcomes[:3]), "expected the full scan to notice the replaced object"
        analyst.ask("DETACH db")
        analyst.ask(f"ATTACH '{URL}' AS db (READ_ONLY)")
        assert analyst.ask(scan)[0][:3] == [2, 2, 650_000]
    finally:
        analyst.close()


# --- failures --------------------------------------------------------------------------------------------

def wrong_secret(server: S3Server, monkeypatch) -> str:
    server.require_signatures()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-S3CRET-that-must-never-leak-either")
    return URL


def missing_bucket(server: S3Server, monkeypatch) -> str:
    return "s3://no-such-bucket/acme/ordersync.duckdb"


def refusing_writes(server: S3Server, monkeypatch) -> str:
    server.refuse_writes = True
    return URL


@pytest.mark.slow
@pytest.mark.parametrize("break_it, says", [
    (wrong_secret, "SignatureDoesNotMatch"),
    (missing_bucket, "Create the bucket"),
    (refusing_writes, "HTTP 500 InternalError"),
])
def test_a_failed_upload_fails_the_run_in_one_line_and_leaves_the_last_good_version(
        s3, simulator, resources, tmp_path, monkeypatch, capfd, break_it, says):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        assert run_daily(publishing(resources), "2025-12-08", instance).success
        before = s3.objects(BUCKET)
        url = break_it(s3, monkeypatch)
        secrets = [s3.secret, os.environ["AWS_SECRET_ACCESS_KEY"]]
        simulator.clock.advance(days=1)
        result = run_daily(publishing(resources, url), "2025-12-09", instance)
        assert not result.success
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
        message = failure.step_failure_data.error.message.strip()
        logs = "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))
    s3.refuse_writes = False
    assert f"Failure: publishing {url} failed at '" in message and says in message  # Dagster names the class
    assert "unchanged" in message and "\n" not in message
    assert s3.objects(BUCKET) == before  # the URL's object and every version, byte for byte
    output = capfd.readouterr()
    for secret in secrets:
        assert secret not in message and secret not in logs and secret not in output.out + output.err
        assert files_containing(tmp_path, secret) == []  # DAGSTER_HOME, the DuckDB files, everything


@pytest.mark.slow
def test_one_retailers_failing_upload_fails_only_that_retailer(s3, simulator, tmp_path):
    def retailer(name: str, url: str) -> dict:
        folder = tmp_path / name
        return {"ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=simulator.base_url),
                "warehouse": OrderSyncWarehouse(database=str(folder / "work.duckdb"),
                                                analyst_database=str(folder / "ordersync.duckdb"), publish_url=url)}

    defs = build_many_retailers_definitions({"acme": retailer("acme", URL),
                                             "globex": retailer("globex", "s3://no-such-bucket/globex/o.duckdb")})
    results = {name: defs.resolve_job_def(f"daily_order_sync_{name}").execute_in_process(
        partition_key="2025-12-08", raise_on_error=False) for name in ("acme", "globex")}
    assert results["acme"].success and not results["globex"].success
    assert set(s3.objects(BUCKET)) == {LATEST_KEY, *(k for k in s3.objects(BUCKET) if k.startswith(VERSIONS))}
    assert len(s3.objects(BUCKET, VERSIONS)) == 1


@pytest.mark.slow
def test_kill_9_of_a_run_during_its_upload_leaves_the_url_the_last_good_version(s3, simulator, resources, database,
                                                                               published):
    assert run_daily(publishing(resources), "2025-12-08").success
    good = s3.objects(BUCKET, LATEST_KEY)[LATEST_KEY]
    s3.write_delay_seconds = 3.0  # a slow store, so the kill lands while the version is being uploaded
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": simulator.base_url,
           "ORDERSYNC_DUCKDB_PATH": published, "ORDERSYNC_WORKING_DUCKDB_PATH": database, "ORDERSYNC_PUBLISH_URL": URL,
           "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("DAGSTER_HOME", None)
    run = subprocess.Popen([sys.executable, "-m", "dagster", "job", "execute", "-m", "ordersync_pipeline.definitions",
                            "-j", "daily_order_sync", "--tags", '{"dagster/partition": "2025-12-09"}'],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any(r.split(" ", 1)[0] in ("PUT", "POST") and f"/{VERSIONS}" in r for r in s3.requests):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before uploading"
            time.sleep(0.05)
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.wait(timeout=30)
    time.sleep(s3.write_delay_seconds + 1)  # let the server finish whatever it was handling
    s3.write_delay_seconds = 0.0
    assert s3.objects(BUCKET, LATEST_KEY)[LATEST_KEY] == good  # the copy never happened: the last good version
    local = Path(published).with_name("latest.duckdb")
    local.write_bytes(good)
    with duckdb.connect(str(local), read_only=True) as conn:
        assert conn.execute("SELECT as_of_day::VARCHAR FROM published_snapshot").fetchall() == [("2025-12-08",)]
        assert conn.execute("SELECT count(*) FROM order_statuses").fetchall()[0][0] > 0
    for key, body in s3.objects(BUCKET, VERSIONS).items():  # a version is there whole, or not at all
        path = Path(published).with_name("version.duckdb")
        path.write_bytes(body)
        with duckdb.connect(str(path), read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM published_snapshot").fetchall() == [(1,)], key
        path.unlink()


PUBLISHER = """
import datetime as dt, sys, time
from ordersync_pipeline.storage.object_storage import upload_snapshot
files, url = sys.argv[1:3], sys.argv[3]
moment = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
for n in range(1000):
    upload_snapshot(files[n % 2], url, moment + dt.timedelta(minutes=n), keep=3)
    print(n, flush=True)
"""


@pytest.mark.slow
def test_kill_9_during_the_upload_leaves_the_url_a_whole_openable_version(s3, tmp_path):
    files = [snapshot_database(tmp_path / f"v{v}.duckdb", v, 600_000 + 100_000 * v) for v in (1, 2)]
    rng = random.Random(20)
    seen = set()
    for attempt in range(6):
        publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, *files, URL], stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        publisher.stdout.readline()  # one publish done: the kill lands in a later one, mid-upload or mid-copy
        time.sleep(rng.uniform(0.0, 1.0))
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(timeout=30)
        latest = tmp_path / "latest.duckdb"
        latest.write_bytes(s3.objects(BUCKET, LATEST_KEY)[LATEST_KEY])
        with duckdb.connect(str(latest), read_only=True) as conn:
            (version, rows), = conn.execute("SELECT v, n FROM info").fetchall()
            assert conn.execute("SELECT count(*), min(v), max(v) FROM lines").fetchall() == [(rows, version, version)]
        assert latest.read_bytes() == Path(files[version - 1]).read_bytes(), attempt
        wholes = {Path(f).read_bytes() for f in files}  # a killed multipart upload never appears as a version
        assert all(body in wholes for body in s3.objects(BUCKET, VERSIONS).values()), attempt
        seen.add(version)
        latest.unlink()
    assert seen, "no attempt was checked"
