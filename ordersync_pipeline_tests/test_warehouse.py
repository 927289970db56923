"""Storing days in DuckDB: atomic replace, no duplicates, history, refreshes, lock errors."""

import datetime as dt

import duckdb
import pytest

from ordersync_pipeline.storage import warehouse
from ordersync_pipeline.normalise import normalise_order_statuses
from ordersync_pipeline.storage.warehouse import apply_refreshed_statuses, replace_days
from ordersync_pipeline_tests.lines import DAY, at, day_load, line

def test_replacing_a_day_twice_never_duplicates(conn):
    replace_days(conn, [day_load([line(n) for n in range(5)], at(1))])
    replace_days(conn, [day_load([line(n, "shipped") for n in range(1, 6)], at(2))])
    rows = conn.execute("SELECT order_status_id, status FROM order_statuses ORDER BY 1").fetchall()
    assert rows == [(f"L{n}", "shipped") for n in range(1, 6)]  # L0 gone: the day is exactly the new read
    assert conn.execute("SELECT api_total, rows_stored FROM order_status_loads").fetchall() == [(5, 5)]


def test_replacing_one_day_leaves_other_days_alone(conn):
    other = DAY + dt.timedelta(days=1)
    replace_days(conn, [day_load([line(n) for n in range(3)], at(1))])
    replace_days(conn, [day_load([line(n + 50, day=other) for n in range(2)], at(1), day=other)])
    replace_days(conn, [day_load([line(0)], at(2))])
    assert conn.execute("SELECT order_day, count(*) FROM order_statuses GROUP BY 1 ORDER BY 1").fetchall() == [
        (DAY, 1), (other, 2)]


def test_a_failure_mid_write_leaves_the_previous_rows(conn, monkeypatch):
    replace_days(conn, [day_load([line(n) for n in range(4)], at(1))])
    before = conn.execute("SELECT * FROM order_statuses ORDER BY order_status_id").fetchall()

    def fail(*args, **kwargs):  # after the DELETE and INSERT have run inside the transaction
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(warehouse, "_record_history", fail)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        replace_days(conn, [day_load([line(9, "delivered")], at(2))])
    assert conn.execute("SELECT * FROM order_statuses ORDER BY order_status_id").fetchall() == before
    assert conn.execute("SELECT fetched_at FROM order_status_loads").fetchall() == [(at(1),)]


def test_history_records_each_status_spell_once(conn):
    for hour, status in [(1, "processing"), (2, "processing"), (3, "shipped"), (4, "shipped"), (5, "delivered")]:
        replace_days(conn, [day_load([line(0, status)], at(hour))])
    history = conn.execute(
        "SELECT status, first_seen_at, last_seen_at, is_latest FROM order_status_history ORDER BY first_seen_at"
    ).fetchall()
    assert history == [("processing", at(1), at(2), False), ("shipped", at(3), at(4), False),
                       ("delivered", at(5), at(5), True)]


def test_refreshes_update_exactly_the_returned_lines_that_are_stored(conn):
    replace_days(conn, [day_load([line(n) for n in range(4)], at(1))])
    fresh = normalise_order_statuses([line(1, "delivered"), line(2, "cancelled"), line(77, "shipped")],
                                     fetched_at=at(5))
    refreshed = apply_refreshed_statuses(conn, fresh.rows, fresh.rejects)
    assert refreshed.updated == 2 and refreshed.days_to_reread == set()
    assert conn.execute("SELECT order_status_id, status FROM order_statuses ORDER BY 1").fetchall() == [
        ("L0", "processing"), ("L1", "delivered"), ("L2", "cancelled"), ("L3", "processing")]
    assert conn.execute("SELECT count(*) FROM order_status_history WHERE order_status_id = 'L77'").fetchall()[0] == (0,)
    assert conn.execute(
        "SELECT status FROM order_status_history WHERE order_status_id = 'L1' ORDER BY first_seen_at").fetchall() == [
        ("processing",), ("delivered",)]


def test_rejects_are_stored_with_their_day_and_replaced_with_it(conn):
    bad = {"order_date": f"{DAY}T01:00:00+00:00", "status": "processing"}
    replace_days(conn, [day_load([line(0), bad], at(1))])
    replace_days(conn, [day_load([line(0), bad], at(2))])
    assert conn.execute("SELECT order_day, reason, source FROM order_status_rejects").fetchall() == [
        (DAY, "missing order_status_id", "by-date")]


def test_comments_are_stored_in_the_file(conn):
    comment = conn.execute(
        "SELECT comment FROM duckdb_columns() WHERE table_name = 'order_statuses' AND column_name = 'delivery_date'"
    ).fetchall()[0][0]
    assert "UTC" in comment
    assert conn.execute("SELECT comment FROM duckdb_tables() WHERE table_name = 'order_statuses'").fetchall()[0][0]


def test_a_lock_error_names_the_holder_and_what_to_do():
    error = duckdb.IOException('IO Error: Could not set lock on file "/d/x.duckdb": Conflicting lock is held in '
                               "/usr/bin/duckdb (PID 4242) by user ana.")
    message = str(warehouse.explain_lock_error("/d/x.duckdb", error, waited_seconds=120))
    assert "/usr/bin/duckdb (PID 4242)" in message and "nothing was written" in message and "re-run" in message
    # A lock error worded otherwise still says what DuckDB said, rather than only "another process".
    unnamed = duckdb.IOException('IO Error: Could not set lock on file "/d/x.duckdb": Resource temporarily unavailable')
    assert warehouse.lock_holder(unnamed) == ('another process (DuckDB: IO Error: Could not set lock on file '
                                              '"/d/x.duckdb": Resource temporarily unavailable)')


def test_several_days_in_one_transaction_are_replaced_together_or_not_at_all(conn, monkeypatch):
    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    replace_days(conn, [day_load([line(10 * i + n, day=d) for n in range(2)], at(1), day=d) for i, d in enumerate(days)])
    assert conn.execute("SELECT order_day, count(*) FROM order_statuses GROUP BY 1 ORDER BY 1").fetchall() == [
        (d, 2) for d in days]
    before = conn.execute("SELECT * FROM order_statuses ORDER BY order_day, order_status_id").fetchall()
    monkeypatch.setattr(warehouse, "_record_history", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        replace_days(conn, [day_load([line(10 * i + 7, "delivered", day=d)], at(2), day=d) for i, d in enumerate(days)])
    assert conn.execute("SELECT * FROM order_statuses ORDER BY order_day, order_status_id").fetchall() == before
    with pytest.raises(ValueError, match="same day twice"):
        replace_days(conn, [day_load([line(1)], at(3)), day_load([line(2)], at(3))])
