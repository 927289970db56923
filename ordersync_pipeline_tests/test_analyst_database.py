"""The analysts' file: published after every good run, never blocking and never blocked by an analyst."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse, resources_from_env
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline.storage.snapshots import WarehouseFileError, default_working_path
from ordersync_pipeline_tests.support import CLIENT_VENVS, run_daily
from ordersync_pipeline_tests.truth import assert_table_equals_truth


def published_info(path: str) -> tuple:
    with duckdb.connect(path, read_only=True) as conn:
        return conn.execute("SELECT published_at, dagster_run_id, as_of_day, order_lines FROM published_snapshot"
                            ).fetchall()[0]


def files_beside(path: str) -> list[str]:
    return sorted(os.listdir(Path(path).parent))


def test_a_daily_run_publishes_a_complete_snapshot_with_nothing_left_beside_it(simulator, resources, database,
                                                                               published):
    result = run_daily(resources, "2025-12-08")
    assert result.success
    assert files_beside(published) == ["ordersync.duckdb"]  # no WAL, no temporary copy
    published_at, run_id, as_of, lines = published_info(published)
    assert run_id == result.run_id and as_of == dt.date(2025, 12, 8)
    with duckdb.connect(published, read_only=True) as snapshot, duckdb.connect(database, read_only=True) as working:
        tables = [t for (t,) in working.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        assert {"order_statuses", "order_status_history", "delivery_lead_times", "open_orders"} <= set(tables)
        for table in tables:
            count = f"SELECT count(*) FROM {table}"
            assert snapshot.execute(count).fetchall() == working.execute(count).fetchall(), table
        assert snapshot.execute("SELECT comment FROM duckdb_tables() WHERE table_name = 'published_snapshot'"
                                ).fetchall()[0][0].startswith("One row: when this analysts' file was published")
    assert lines > 0
    metadata = result.asset_materializations_for_node("analyst_database")[0].metadata
    assert metadata["order_lines"].value == lines and metadata["seconds_taken"].value >= 0
    assert metadata["size_mb"].value > 0 and "order_statuses" in metadata["tables"].value
    assert metadata["published_at"].value == pytest.approx(published_at.timestamp(), abs=5)


def test_a_session_held_across_publishes_keeps_its_snapshot_and_a_new_one_sees_the_new_data(
        simulator, resources, published):
    assert run_daily(resources, "2025-12-05").success
    analyst = duckdb.connect(published, read_only=True)
    analyst.execute("BEGIN TRANSACTION")
    first_answer = analyst.execute("SELECT count(*), max(order_day) FROM order_statuses").fetchall()
    for day in ("2025-12-06", "2025-12-07"):
        simulator.clock.advance(days=1)
        assert run_daily(resources, day).success
        assert analyst.execute("SELECT count(*), max(order_day) FROM order_statuses").fetchall() == first_answer
    analyst.execute("COMMIT")
    assert analyst.execute("SELECT count(*), max(order_day) FROM order_statuses").fetchall() == first_answer
    analyst.close()
    with duckdb.connect(published, read_only=True) as fresh:
        assert fresh.execute("SELECT max(order_day) FROM order_statuses").fetchall() == [(dt.date(2025, 12, 7),)]


def test_a_failing_blocking_check_keeps_the_last_good_snapshot(simulator, resources, database, published):
    assert run_daily(resources, "2025-12-05").success
    good = published_info(published)
    with duckdb.connect(database) as conn:  # a duplicated line, as a bug would leave it
        conn.execute("INSERT INTO order_statuses SELECT * FROM order_statuses WHERE order_day = DATE '2025-12-01' "
                     "LIMIT 1")
    simulator.clock.advance(days=1)
    result = run_daily(resources, "2025-12-06")
    assert not result.success
    assert published_info(published) == good
    assert not result.asset_materializations_for_node("analyst_database")
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    assert set(failed) == {"order_status_id_is_unique", "row_count_matches_api_total"}  # the extra row counts too
    assert failed["order_status_id_is_unique"].description == "1 order_status_id values appear more than once"
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "order_statuses" in started and not {"order_status_refresh", "analyst_database"} & started


def test_a_check_that_raises_is_reported_and_blocks_only_if_it_is_a_blocking_one(simulator, resources, published,
                                                                                 monkeypatch):
    """order_statuses' six checks run in one step: one that raises must not take the others' results with it,
    and a warning check that raises must not hold the analysts' file back."""
    from ordersync_pipeline.assets import order_statuses as module

    def raising(name: str):
        def check(conn):
            raise RuntimeError(f"{name} ran out of memory\nsecond line")
        check.__name__ = name
        return check

    def replaced(name: str) -> list:
        return [(raising(name), blocking, description) if check.__name__ == name else (check, blocking, description)
                for check, blocking, description in module.ORDER_STATUS_CHECKS]

    six = {check.__name__ for check, _, _ in module.ORDER_STATUS_CHECKS}
    monkeypatch.setattr(module, "ORDER_STATUS_CHECKS", replaced("statuses_in_known_vocabulary"))
    result = run_daily(resources, "2025-12-05")
    assert result.success and result.asset_materializations_for_node("analyst_database")
    checks = {e.check_name: e for e in result.get_asset_check_evaluations() if e.check_name in six}
    assert len(checks) == 6 and [n for n, e in checks.items() if not e.passed] == ["statuses_in_known_vocabulary"]
    warned = checks["statuses_in_known_vocabulary"]
    assert warned.severity == dg.AssetCheckSeverity.WARN
    assert warned.description == ("the check raised RuntimeError: statuses_in_known_vocabulary ran out of memory "
                                  "(traceback in this run's log; rerun with publish_analyst_database once fixed)")
    good = published_info(published)

    monkeypatch.setattr(module, "ORDER_STATUS_CHECKS", replaced("order_status_id_is_unique"))
    simulator.clock.advance(days=1)
    result = run_daily(resources, "2025-12-06")
    assert not result.success and published_info(published) == good
    checks = {e.check_name: e for e in result.get_asset_check_evaluations() if e.check_name in six}
    assert len(checks) == 6 and not checks["order_status_id_is_unique"].passed
    assert checks["order_status_id_is_unique"].severity == dg.AssetCheckSeverity.ERROR
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert not {"order_status_refresh", "analyst_database"} & started


def test_an_analyst_holding_the_published_file_read_write_cannot_break_the_next_publish(
        simulator, resources, published):
    assert run_daily(resources, "2025-12-05").success
    # A DBeaver session opened read-write by mistake, writing into the published file and staying open.
    analyst = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "c.execute('CREATE TABLE scratch AS SELECT 1 AS x'); c.execute('INSERT INTO scratch VALUES (2)'); "
         "print('open', flush=True); sys.stdin.readline(); c.execute('INSERT INTO scratch VALUES (3)'); "
         "print('wrote', flush=True); sys.stdin.readline()", published],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert analyst.stdout.readline().strip() == "open"
        simulator.clock.advance(days=1)
        instance = dg.DagsterInstance.ephemeral()
        result = run_daily(resources, "2025-12-06", instance)
        assert result.success
        warnings = [entry.user_message for entry in instance.all_logs(result.run_id) if "read-write" in entry.user_message]
        assert len(warnings) == 1 and f"PID {analyst.pid}" in warnings[0]
        assert published_info(published)[2] == dt.date(2025, 12, 6)  # opens, and is the new snapshot
        analyst.stdin.write("\n")
        analyst.stdin.flush()
        assert analyst.stdout.readline().strip() == "wrote"
        simulator.clock.advance(days=1)
        assert run_daily(resources, "2025-12-07").success
        assert published_info(published)[2] == dt.date(2025, 12, 7)
    finally:
        analyst.kill()
        analyst.wait(timeout=30)
    assert files_beside(published) == ["ordersync.duckdb"]
    with duckdb.connect(published, read_only=True) as fresh:
        assert "scratch" not in {t for (t,) in fresh.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def test_an_existing_single_file_install_is_adopted_on_its_first_run(simulator, tmp_path):
    old_file = str(tmp_path / "data" / "ordersync.duckdb")
    api = OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=simulator.base_url)
    # Yesterday's install: one file written by the runs and opened by analysts.
    from ordersync_pipeline.assets.order_statuses import order_statuses

    assert dg.materialize([order_statuses], resources={"ordersync": api, "warehouse": OrderSyncWarehouse(
        database=old_file, storage_version="latest")}, partition_key="2025-12-01").success
    # A change still in the WAL, as a killed process leaves it (os._exit skips DuckDB's checkpoint on close).
    subprocess.run([sys.executable, "-c", "import duckdb, os, sys; c = duckdb.connect(sys.argv[1]); "
                    "c.execute(\"CREATE TABLE analyst_notes AS SELECT 'keep me' AS note\"); os._exit(0)", old_file],
                   check=True)
    assert os.path.exists(f"{old_file}.wal")

    upgraded = {"ordersync": api, "warehouse": OrderSyncWarehouse(
        database=default_working_path(old_file), analyst_database=old_file)}
    assert run_daily(upgraded, "2025-12-02").success
    working = default_working_path(old_file)
    assert working == str(tmp_path / "data" / ".ordersync-working" / "ordersync.duckdb")
    for path in (working, old_file):
        assert_table_equals_truth(path, simulator.records_for_days(dt.date(2025, 12, 1), dt.date(2025, 12, 2)),
                                  where="order_day IN ('2025-12-01', '2025-12-02')")
        with duckdb.connect(path, read_only=True) as conn:
            assert conn.execute("SELECT note FROM analyst_notes").fetchall() == [("keep me",)]
    assert files_beside(old_file) == [".ordersync-working", "ordersync.duckdb"]  # the old WAL is gone too


def test_the_working_file_defaults_to_a_hidden_folder_beside_the_published_file(monkeypatch, tmp_path):
    monkeypatch.setenv("ORDERSYNC_DUCKDB_PATH", str(tmp_path / "team" / "orders.duckdb"))
    warehouse = resources_from_env()["warehouse"]
    assert warehouse.analyst_database == str(tmp_path / "team" / "orders.duckdb")
    assert warehouse.database == str(tmp_path / "team" / ".ordersync-working" / "orders.duckdb")
    monkeypatch.setenv("ORDERSYNC_WORKING_DUCKDB_PATH", str(tmp_path / "private.duckdb"))
    assert resources_from_env()["warehouse"].database == str(tmp_path / "private.duckdb")
    monkeypatch.setenv("ORDERSYNC_DUCKDB_STORAGE_VERSION", "v0.0.0-nope")
    with pytest.raises(ValueError, match="ORDERSYNC_DUCKDB_STORAGE_VERSION must be a DuckDB version such as v1.4.0"):
        resources_from_env()


def a_folder(tmp: Path) -> Path:
    (tmp / "a_folder").mkdir()
    return tmp / "a_folder"


def a_text_file(tmp: Path) -> Path:
    (tmp / "notes.duckdb").write_text("not a database\n" * 500)
    return tmp / "notes.duckdb"


def a_read_only_place(tmp: Path) -> Path:
    return Path("/proc/ordersync/ordersync.duckdb")  # read-only even for root


def a_motherduck_path(tmp: Path) -> Path:
    return Path("md:ordersync")


@pytest.mark.parametrize("make_bad_path, setting, says", [
    (a_motherduck_path, "ORDERSYNC_DUCKDB_PATH", "MotherDuck paths are not supported"),
    (a_folder, "ORDERSYNC_DUCKDB_PATH", "is a directory"),
    (a_text_file, "ORDERSYNC_DUCKDB_PATH", "is not a DuckDB database file"),
    (a_read_only_place, "ORDERSYNC_DUCKDB_PATH", "cannot create its folder"),
])
def test_an_unusable_duckdb_path_fails_in_one_line_naming_the_setting(tmp_path, make_bad_path, setting, says):
    bad = str(make_bad_path(tmp_path))
    warehouse = OrderSyncWarehouse(database=default_working_path(bad), analyst_database=bad)
    with pytest.raises(WarehouseFileError) as raised:
        with warehouse.connect():
            pass
    message = str(raised.value)
    assert message.startswith(f"{setting}={bad}") and says in message and "\n" not in message
    assert not os.path.exists(default_working_path(bad))  # nothing written


def publish_version(working: str, published: str, point: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ordersync_pipeline_tests.publisher_to_kill", working, published,
                             point], stdout=subprocess.PIPE, text=True)


def published_version(published: str) -> int:
    """The version the published file holds, checked whole: every line of that version and no other."""
    with duckdb.connect(published, read_only=True) as conn:
        (version,) = conn.execute("SELECT v FROM version").fetchall()[0]
        of_version, total = conn.execute("SELECT count(*) FILTER (WHERE v = $v), count(*) FROM lines",
                                         {"v": version}).fetchall()[0]
        assert conn.execute("SELECT dagster_run_id FROM published_snapshot").fetchall() == [(f"version-{version}",)]
    assert of_version == total == 300_000, f"version {version}: {of_version} of {total} lines"
    return version


@pytest.mark.slow
@pytest.mark.parametrize("point,survivor", [("before-copy", "old"), ("mid-copy", "old"), ("before-rename", "old"),
                                            ("after-rename", "new")])
def test_kill_9_at_each_point_of_publishing_leaves_the_old_or_the_new_snapshot_whole(tmp_path, point, survivor):
    import signal

    working, published = str(tmp_path / "work" / "w.duckdb"), str(tmp_path / "ordersync.duckdb")
    os.makedirs(tmp_path / "work")
    first = publish_version(working, published, "none")
    assert first.wait(timeout=120) == 0
    assert published_version(published) == 1
    publisher = publish_version(working, published, point)
    assert publisher.stdout.readline().strip() == point  # stopped exactly there
    publisher.send_signal(signal.SIGKILL)
    publisher.wait(timeout=30)
    assert published_version(published) == {"old": 1, "new": 2}[survivor]
    assert not os.path.exists(f"{published}.wal")
    leftovers = [name for name in os.listdir(tmp_path) if ".publishing-" in name]
    assert bool(leftovers) == (point in ("mid-copy", "before-rename")), leftovers
    # The next publish goes through without any step by hand and removes what the killed one left.
    following = publish_version(working, published, "none")
    assert following.wait(timeout=120) == 0
    assert published_version(published) == 3  # the killed run committed version 2 to the working file
    assert files_beside(published) == ["ordersync.duckdb", "work"]


CLIENT_QUERY = """
import duckdb, json, sys
conn = duckdb.connect(sys.argv[1], read_only=True)
tables = [t for (t,) in conn.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
latest = conn.execute("SELECT max(order_date)::VARCHAR, max(delivery_date)::VARCHAR FROM order_statuses").fetchall()[0]
names = conn.execute("SELECT max(len(extra_field_names)) FROM order_status_loads").fetchall()[0][0]
print(json.dumps({"version": duckdb.__version__, "counts": counts, "latest": list(latest), "names": names}))
"""


def duckdb_client(version: str) -> str:
    """The python of a virtual environment holding only duckdb==version (created once, then reused)."""
    venv = CLIENT_VENVS / f"duckdb-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"duckdb=={version}"], check=True, timeout=600)
    return str(python)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["1.4.4", "1.5.6"])  # the 1.4 LTS and the newest 1.5
def test_the_published_file_opens_in_older_duckdb_clients(simulator, resources, published, version):
    import json

    assert run_daily(resources, "2025-12-08").success
    answer = subprocess.run([duckdb_client(version), "-c", CLIENT_QUERY, published], capture_output=True, text=True,
                            check=True, timeout=120)
    seen_by_client = json.loads(answer.stdout)
    mine = json.loads(subprocess.run([sys.executable, "-c", CLIENT_QUERY, published], capture_output=True,
                                     text=True, check=True, timeout=120).stdout)
    assert seen_by_client["version"] == version
    assert seen_by_client["counts"] == mine["counts"] and mine["counts"]["order_statuses"] > 0
    assert seen_by_client["latest"] == mine["latest"] and seen_by_client["names"] == mine["names"]


def test_published_snapshot_says_what_the_file_holds_after_runs_out_of_order(simulator, resources, database,
                                                                             published):
    assert run_daily(resources, "2025-12-08").success
    before_late_run = dt.datetime.now(dt.timezone.utc)
    late = run_daily(resources, "2025-12-06")  # a catch-up run finishing after a newer one
    assert late.success
    published_at, run_id, as_of, lines = published_info(published)
    with duckdb.connect(published, read_only=True) as conn:
        marts = conn.execute("SELECT (SELECT max(as_of_day) FROM open_orders), "
                             "(SELECT max(as_of_day) FROM open_order_summary)").fetchall()[0]
        assert lines == conn.execute("SELECT count(*) FROM order_statuses").fetchall()[0][0]
    assert run_id == late.run_id and as_of == marts[0] == marts[1] == dt.date(2025, 12, 8)
    # Written into the copy just before it replaced the previous file: not before the copy existed.
    assert published_at.timestamp() <= os.path.getmtime(published) + 1
    # To the second (it names the version in object storage), after the working file's last checkpoint.
    assert published_at >= before_late_run.replace(microsecond=0)
    assert published_at.timestamp() + 1 > os.path.getmtime(database)
    # The row is written into the copy itself: the working file never holds one to copy (a stale one before).
    with duckdb.connect(database, read_only=True) as working:
        assert working.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'published_snapshot'"
                               ).fetchall() == [(0,)]
