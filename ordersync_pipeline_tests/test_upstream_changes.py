"""Upstream changes real APIs make, through many daily runs: an order's date corrected to the next day, lines
that vanish (orders deleted or merged), a status whose spelling changes. Every run must pass its blocking
checks, every line the API returns must be stored once under its current day, and the marts must not count
what the API stopped returning."""

import datetime as dt

import duckdb
import pytest

from ordersync_pipeline.definitions import build_definitions
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import OrderSyncSimulator, SimulatedClock
from ordersync_pipeline.vocabulary import CLOSED_STATUSES
from ordersync_pipeline_tests.support import SIM_NOW, range_tags
from ordersync_pipeline_tests.truth import expected_row, stored_rows

pytestmark = pytest.mark.slow

FIRST_DAY = dt.date(2025, 11, 24)
LOOKBACK = 3  # short, so corrections and vanishing happen both inside the window (by-date) and outside it (look-ups)
MORNINGS = 9


@pytest.fixture
def simulator():
    retailer = SimulatedRetailer(seed=23, orders_per_day=50, date_corrections=0.04, vanishing=0.03, respelling=0.05)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=FIRST_DAY) as sim:
        yield sim


def run_daily(defs, **options):
    result = defs.resolve_job_def("daily_order_sync").execute_in_process(
        run_config={"ops": {"order_status_refresh": {"config": {"lookback_days": LOOKBACK}}}}, raise_on_error=False,
        **options)
    failed = [e.event_specific_data.error.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert result.success and not failed, failed
    assert all(check.passed for check in checks if check.severity.value == "ERROR"), checks
    return result


def every_line(simulator, now: dt.datetime) -> dict[str, object]:
    """Each line the simulator ever generated for the test's days, by id."""
    return {line.order_status_id: line
            for offset in range((now.date() - FIRST_DAY).days + 1)
            for line in simulator.retailer.lines_for_day(FIRST_DAY + dt.timedelta(days=offset))}


def test_corrected_dates_vanished_lines_and_respelled_statuses_through_daily_runs(simulator, resources, database):
    defs = build_definitions(resources)
    last_day = SIM_NOW.date() - dt.timedelta(days=1)
    run_daily(defs, tags=range_tags(str(FIRST_DAY), str(last_day)))
    stored_on_first_load = stored_rows(database)
    for _ in range(MORNINGS):
        simulator.clock.advance(days=1)
        last_day += dt.timedelta(days=1)
        run_daily(defs, partition_key=str(last_day))  # fails on a duplicate line or a day off its API total

        truth = {r["order_status_id"]: expected_row(r) for r in simulator.records_for_days(FIRST_DAY, last_day)}
        stored = stored_rows(database)
        # Every line the API returns is stored once, under the day its latest order_date says, as sent.
        assert {k: stored.get(k) for k in truth} == truth
        # Extra rows can only be lines the API stopped returning that were closed before they vanished: the
        # refresh re-reads open lines only, so a finished line older than the lookback window is not re-checked.
        now = simulator.clock.now()
        lines = every_line(simulator, now)
        for extra in stored.keys() - truth.keys():
            line = lines[extra]
            assert line.vanishes_at is not None and line.vanishes_at <= now, extra
            assert stored[extra]["status"].strip().lower() in CLOSED_STATUSES, stored[extra]
            assert stored[extra]["order_day"] < last_day - dt.timedelta(days=LOOKBACK)

    moved = [line for line in lines.values() if line.date_corrected_at is not None
             and line.order_status_id in stored_on_first_load
             and stored_on_first_load[line.order_status_id]["order_day"] == line.order_date.date()
             and line.date_corrected_at <= now and line.record_at(now) is not None]
    assert len(moved) >= 5, "the test needs lines whose date was corrected after they were first stored"
    gone = {line.order_status_id for line in lines.values() if line.vanishes_at is not None and line.vanishes_at <= now}
    respelled = {line.order_status_id for line in lines.values()
                 if line.respelled_at is not None and line.respelled_at <= now and line.record_at(now) is not None}
    assert gone and respelled

    with duckdb.connect(database, read_only=True) as conn:
        def ids(sql: str) -> list[str]:
            return [row[0] for row in conn.execute(sql).fetchall()]

        # Moved lines: one row, one current history spell, under the new day.
        latest_spells = conn.execute("SELECT order_status_id, count(*) FROM order_status_history WHERE is_latest "
                                     "GROUP BY 1 HAVING count(*) > 1").fetchall()
        assert latest_spells == []
        for line in moved:
            days = ids(f"SELECT DISTINCT order_day FROM order_status_history WHERE order_status_id = '{line.order_status_id}'")
            assert days == [line.order_date.date() + dt.timedelta(days=1)]
        # Vanished open lines: recorded in vanished_lines, counted nowhere as open.
        vanished = set(ids("SELECT order_status_id FROM vanished_lines"))
        assert vanished and vanished <= gone
        open_gone = {i for i in gone if i in stored_on_first_load
                     and stored_on_first_load[i]["status"].strip().lower() not in CLOSED_STATUSES}
        assert open_gone, "the test needs open lines that vanished"
        for table in ("open_orders", "stuck_lines", "order_statuses"):
            counted = set(ids(f"SELECT order_status_id FROM {table}")) & vanished
            assert not counted, (table, counted)
        backlog_today = conn.execute("SELECT sum(open_lines) FROM open_order_backlog WHERE as_of_day = ?",
                                     [last_day]).fetchall()[0][0]
        assert backlog_today == conn.execute("SELECT count(*) FROM open_orders").fetchall()[0][0]
        # A status sent in a new spelling is no new spell: every spell's status differs from the one before it.
        repeated = conn.execute("""
            SELECT count(*) FROM (
                SELECT order_status_id, lower(trim(status)) AS status_key,
                       lag(lower(trim(status))) OVER (PARTITION BY order_status_id ORDER BY first_seen_at) AS before
                FROM order_status_history) WHERE status_key = before
        """).fetchall()[0][0]
        assert repeated == 0
        assert ids("SELECT order_status_id FROM stuck_lines GROUP BY 1 HAVING count(*) > 1") == []
        # The API's counts still hold for every loaded day (the blocking check, recomputed here).
        off = conn.execute("""
            SELECT l.order_day FROM order_status_loads AS l
            LEFT JOIN (SELECT order_day, count(*) AS n FROM order_statuses GROUP BY 1) AS s USING (order_day)
            WHERE coalesce(s.n, 0) + l.rejects <> l.api_total
        """).fetchall()
        assert off == []
