"""What must leave a working install or refuse to start with one clear line: a corrupt working file, the
working path equal to the published one, a system without POSIX file semantics, retailer names that are SQL
keywords; and the numbers that depend on it: whole days in stuck_lines, one spelling per status in history."""

import datetime as dt
import os
import time

import duckdb
import pytest

from ordersync_pipeline.orchestration import resources as resources_module
from ordersync_pipeline import settings as settings_module
from ordersync_pipeline.reporting.across_retailers import across_retailers_sql
from ordersync_pipeline.assets.backlog import STUCK_LINES_SQL
from ordersync_pipeline.definitions import build_many_retailers_definitions
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse, resources_from_env
from ordersync_pipeline.storage.snapshots import WarehouseFileError
from ordersync_pipeline.storage.warehouse import replace_days
from ordersync_pipeline_tests.lines import DAY, at, day_load, line


def test_a_corrupt_working_file_is_reported_at_once_as_corruption(tmp_path):
    database = str(tmp_path / "w.duckdb")
    with duckdb.connect(database) as conn:
        conn.execute("CREATE TABLE t AS SELECT range AS i, repeat('x', 50) AS s FROM range(300000)")
    with open(database, "r+b") as damaged:  # the first metadata block: DuckDB's checksum no longer matches
        damaged.seek(8192 + 100)
        damaged.write(os.urandom(64))
    warehouse = OrderSyncWarehouse(database=database, lock_timeout_seconds=60)
    started = time.monotonic()
    with pytest.raises(WarehouseFileError) as raised:
        with warehouse.connect():
            pass
    assert time.monotonic() - started < 20  # not the lock wait: "block" in DuckDB's words is no lock
    message = str(raised.value)
    assert message.startswith(f"ORDERSYNC_WORKING_DUCKDB_PATH={database} is corrupt (DuckDB: ")
    assert "Move the file aside" in message and "rebuilds it from the analysts' published file" in message
    assert "locked" not in message


def test_a_lock_error_is_told_apart_from_a_block_error():
    assert resources_module._is_lock_error(duckdb.IOException(
        'IO Error: Could not set lock on file "/d/x.duckdb": Conflicting lock is held in /usr/bin/duckdb (PID 1)'))
    assert not resources_module._is_lock_error(duckdb.IOException(
        "IO Error: Corrupt database file: computed checksum 1 does not match stored checksum 2 in block at location 8192"))


@pytest.mark.parametrize("how", ["same path", "through a symlink", "through a hard link"])
def test_a_working_path_equal_to_the_published_one_is_refused_at_load(monkeypatch, tmp_path, how):
    published = tmp_path / "ordersync.duckdb"
    duckdb.connect(str(published)).close()
    working = {"same path": published, "through a symlink": tmp_path / "link.duckdb",
               "through a hard link": tmp_path / "hard.duckdb"}[how]
    if how == "through a symlink":
        working.symlink_to(published)
    elif how == "through a hard link":
        os.link(published, working)
    monkeypatch.setenv("ORDERSYNC_DUCKDB_PATH", str(published))
    monkeypatch.setenv("ORDERSYNC_WORKING_DUCKDB_PATH", str(working))
    with pytest.raises(WarehouseFileError, match="is the same file as ORDERSYNC_DUCKDB_PATH") as raised:
        resources_from_env()
    assert "\n" not in str(raised.value)


def test_a_system_without_posix_file_semantics_is_refused_at_load(monkeypatch):
    monkeypatch.setattr(resources_module.os, "name", "nt")
    with pytest.raises(RuntimeError, match="POSIX systems only"):
        resources_from_env()


def test_retailer_names_that_are_sql_keywords_or_start_with_a_digit_work_everywhere(monkeypatch, tmp_path):
    names = ("order", "1acme")
    monkeypatch.setenv("ORDERSYNC_RETAILERS", ",".join(names))
    assert settings_module.retailers_from_env() == list(names)
    defs = build_many_retailers_definitions({r: {
        "ordersync": OrderSyncResource(api_key="k", base_url="http://127.0.0.1:1"),
        "warehouse": OrderSyncWarehouse(database=str(tmp_path / r / "w.duckdb"),
                                        analyst_database=str(tmp_path / r / "o.duckdb"))} for r in names})
    for retailer in names:
        assert defs.resolve_job_def(f"daily_order_sync_{retailer}").tags["ordersync/retailer"] == retailer
    files = {}
    for n, retailer in enumerate(names):
        files[retailer] = str(tmp_path / f"{retailer}.duckdb")
        with duckdb.connect(files[retailer]) as conn:
            for table in ("order_statuses", "published_snapshot"):
                conn.execute(f"CREATE TABLE {table} AS SELECT range AS n FROM range({n + 1})")
    with duckdb.connect() as conn:
        conn.execute(across_retailers_sql(files, tables=("order_statuses", "published_snapshot")))
        counts = dict(conn.execute("SELECT retailer, count(*) FROM order_statuses GROUP BY 1").fetchall())
    assert counts == {"order": 1, "1acme": 2}  # two retailers, never merged


def history(conn, order_status_id: str) -> list[tuple]:
    return conn.execute("SELECT status, first_seen_at, last_seen_at, is_latest FROM order_status_history "
                        "WHERE order_status_id = ? ORDER BY first_seen_at", [order_status_id]).fetchall()


def test_a_new_spelling_of_the_same_status_is_no_new_spell(conn):
    for hour, status in [(1, "shipped"), (2, "Shipped"), (3, " SHIPPED "), (4, "delivered")]:
        replace_days(conn, [day_load([line(0, status)], at(hour))])
    assert history(conn, "L0") == [("shipped", at(1), at(3), False), ("delivered", at(4), at(4), True)]


def stuck(conn, observed: dt.datetime, after_days: int = 5) -> list[tuple]:
    conn.execute(STUCK_LINES_SQL, {"as_of": observed.date() - dt.timedelta(days=1), "stuck_after_days": after_days,
                                   "observed_at": observed})
    return conn.execute("SELECT order_status_id, days_in_status FROM stuck_lines ORDER BY 1").fetchall()


def test_stuck_lines_count_whole_days_to_the_latest_observation(conn):
    # Seen processing first at 06:00:05 on the 10th; the run five mornings later starts 2 s earlier.
    first = dt.datetime(2025, 12, 10, 6, 0, 5, tzinfo=dt.timezone.utc)
    replace_days(conn, [day_load([line(0), line(1)], first)])
    later = dt.datetime(2025, 12, 15, 6, 0, 3, tzinfo=dt.timezone.utc)
    replace_days(conn, [day_load([line(0), line(1, "delivered")], later)])
    assert stuck(conn, later) == [("L0", 5)]  # five whole days, though 2 s short of 5 * 86400
    assert stuck(conn, later, after_days=6) == []
    # A line not observed by the latest run still ages up to that observation, not up to its last sighting.
    replace_days(conn, [day_load([line(5, day=DAY + dt.timedelta(days=1))], later, day=DAY + dt.timedelta(days=1))])
    observed = dt.datetime(2025, 12, 18, 6, 0, tzinfo=dt.timezone.utc)
    assert stuck(conn, observed) == [("L0", 8)]
    assert stuck(conn, observed, after_days=3) == [("L0", 8), ("L5", 3)]


def test_a_line_read_under_two_days_of_one_batch_is_stored_once_under_the_later_read(conn):
    """The API moved the line between the reads of its old and its new day: the later read says where it is,
    and the day that lost it is re-read (its stored lines no longer add up to the total it was read with)."""
    other = DAY + dt.timedelta(days=1)
    moved = {**line(1), "order_date": f"{other}T09:00:00+00:00"}
    loads = [day_load([line(0), line(1)], at(1), day=DAY), day_load([line(9, day=other), moved], at(2), day=other)]
    assert replace_days(conn, loads) == {DAY}
    assert conn.execute("SELECT order_status_id, order_day FROM order_statuses ORDER BY 1").fetchall() == [
        ("L0", DAY), ("L1", other), ("L9", other)]
    assert conn.execute("SELECT order_day FROM order_status_history WHERE order_status_id = 'L1' AND is_latest"
                        ).fetchall() == [(other,)]
