"""Backlog over time, scorecards and stuck lines against the simulator's truth, day by day as the clock moves.

One scenario (module fixture): a backfill as of 2025-12-10 06:00, then 10 daily runs, each at 06:00 of
the day after its partition. At every run the test notes what the simulator showed (its truth at that
moment); the expected tables are computed from those notes alone, never from the pipeline's tables.
"""

import datetime as dt
import statistics

import duckdb
import pytest

from ordersync_pipeline.assets.backlog import StuckLinesConfig
from ordersync_pipeline.definitions import build_definitions
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.settings import Settings
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_NOW, analyst_queries, duckdb_env, range_tags
from ordersync_pipeline_tests.truth import expected_row, quantile

FIRST_DAY = dt.date(2025, 11, 26)
DAILY_RUNS = 10
LOOKBACK = 7
STUCK_AFTER = 5
TARGET_DAYS = 7
CLOSED = ("delivered", "cancelled")
WITH_CARRIER = ("shipped", "in_transit")


def run(defs, **options):
    result = defs.resolve_job_def("daily_order_sync").execute_in_process(
        run_config={"ops": {"order_status_refresh": {"config": {"lookback_days": LOOKBACK}}}}, **options)
    assert result.success
    return result


def table(database: str, sql: str) -> list[tuple]:
    with duckdb.connect(database, read_only=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    database = str(tmp_path_factory.mktemp("backlog") / "ordersync.duckdb")
    published = duckdb_env(database)["ORDERSYNC_DUCKDB_PATH"]  # every daily run publishes
    retailer = SimulatedRetailer(seed=23, orders_per_day=25)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=FIRST_DAY) as sim:
        defs = build_definitions({"ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=sim.base_url),
                                  "warehouse": OrderSyncWarehouse(database=database, analyst_database=published)})
        seen: dict[dt.datetime, dict[str, dict]] = {}  # run moment -> every loaded line as the simulator showed it
        stuck_tables: dict[dt.datetime, set[str]] = {}
        day = SIM_NOW.date() - dt.timedelta(days=1)
        run(defs, tags=range_tags(str(FIRST_DAY), str(day)))
        seen[sim.clock.now()] = {r["order_status_id"]: expected_row(r) for r in sim.records_for_days(FIRST_DAY, day)}
        for _ in range(DAILY_RUNS):
            sim.clock.advance(days=1)
            day += dt.timedelta(days=1)
            run(defs, partition_key=str(day))
            seen[sim.clock.now()] = {r["order_status_id"]: expected_row(r) for r in sim.records_for_days(FIRST_DAY, day)}
            stuck_tables[sim.clock.now()] = {i for (i,) in table(database, "SELECT order_status_id FROM stuck_lines")}
        backlog_sql = "SELECT * FROM open_order_backlog ORDER BY ALL"
        backlog = table(database, backlog_sql)
        supplier = table(database, "SELECT * EXCLUDE (delivery_target_days) FROM supplier_scorecard")
        carrier = table(database, "SELECT * FROM carrier_scorecard")

        # Later, an old partition is re-run (its whole job: load, refresh, marts) with the clock days ahead.
        sim.clock.advance(days=2)
        rerun = run(defs, partition_key=str(SIM_NOW.date() + dt.timedelta(days=2)))
        backlog_after_rerun = table(database, backlog_sql)
        timelines = {line.order_status_id: line.timeline
                     for d in range((day - FIRST_DAY).days + 1) for line in retailer.lines_for_day(FIRST_DAY + dt.timedelta(days=d))}
    return dict(database=database, seen=seen, stuck_tables=stuck_tables, backlog=backlog, supplier=supplier,
                carrier=carrier, backlog_after_rerun=backlog_after_rerun, rerun=rerun, timelines=timelines)


def age_bucket(age: int) -> str:
    return next(label for label, high in (("0-2", 2), ("3-7", 7), ("8-14", 14), ("15-30", 30), ("31+", 10**6)) if age <= high)


def week(moment: dt.datetime) -> dt.date:
    return moment.date() - dt.timedelta(days=moment.weekday())


@pytest.mark.slow
def test_every_backlog_day_is_what_its_run_saw_and_a_late_rerun_changes_nothing(scenario):
    expected: dict[tuple, list] = {}
    for moment, lines in scenario["seen"].items():
        as_of = moment.date() - dt.timedelta(days=1)
        for row in lines.values():
            if row["status"] not in CLOSED:
                group = expected.setdefault((as_of, row["supplier"], row["status"],
                                             age_bucket((as_of - row["order_day"]).days)), [0, set(), row["order_date"]])
                group[0] += 1
                group[1].add(row["order_id"])
                group[2] = min(group[2], row["order_date"])
    stored = {(d, s, st, b): [n, orders, oldest, observed] for d, s, st, b, n, orders, oldest, observed in scenario["backlog"]}
    assert stored.keys() == expected.keys()
    for key, (lines, orders, oldest) in expected.items():
        assert stored[key][:3] == [lines, len(orders), oldest], key
        assert stored[key][3] == dt.datetime.combine(key[0] + dt.timedelta(days=1), dt.time(6), dt.timezone.utc)
    days = sorted({key[0] for key in stored})
    # The backfill ran on 2025-12-10: it saw 12-09, and must not pretend to have seen the days before.
    assert days[0] == SIM_NOW.date() - dt.timedelta(days=1) and len(days) == DAILY_RUNS + 1
    totals = [sum(v[0] for k, v in stored.items() if k[0] == d) for d in days]
    assert len(set(totals)) > 3  # the backlog moved from day to day

    assert scenario["backlog_after_rerun"] == scenario["backlog"]
    event = next(e for e in scenario["rerun"].get_asset_materialization_events()
                 if e.asset_key.path == ["open_order_backlog"])
    assert event.materialization.metadata["day_written"].value == "none"


def observations(scenario) -> dict[str, list[tuple[dt.datetime, str]]]:
    """Each line's (moment, status) at every run that saw it."""
    story: dict[str, list] = {}
    for moment, lines in scenario["seen"].items():
        for line_id, row in lines.items():
            story.setdefault(line_id, []).append((moment, row["status"]))
    return story


@pytest.mark.slow
def test_supplier_scorecard_equals_a_recomputation_from_what_the_simulator_showed(scenario):
    final = scenario["seen"][max(scenario["seen"])]
    story = observations(scenario)
    groups: dict[tuple, list] = {}
    for line_id, row in final.items():
        groups.setdefault((row["supplier"], week(row["order_date"])), []).append((line_id, row))
    expected = {}
    for key, members in groups.items():
        statuses = [row["status"] for _, row in members]
        lead = [(row["delivery_date"] - row["order_date"]).total_seconds() / 86400
                for _, row in members if row["status"] == "delivered"]
        backordered = {i for i, _ in members if any(s == "backordered" for _, s in story[i])}
        fully = {i for i, row in members if story[i][0][0].date() <= row["order_day"] + dt.timedelta(days=1)}
        expected[key] = (
            len(members), statuses.count("delivered"), statuses.count("cancelled"),
            sum(s not in CLOSED for s in statuses), len(backordered), len(fully),
            statuses.count("cancelled") / len(members),
            len(backordered & fully) / len(fully) if fully else None,
            quantile(lead, 0.5) if lead else None, quantile(lead, 0.9) if lead else None,
            sum(v <= TARGET_DAYS for v in lead) / len(lead) if lead else None,
        )
    stored = {(row[0], row[1]): row[2:] for row in scenario["supplier"]}
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        assert stored[key] == pytest.approx(want, abs=1e-9), key
    fully_observed = sum(v[5] for v in expected.values())
    assert fully_observed > 300 and sum(v[4] for v in expected.values()) > 20  # enough of each story to mean something
    assert sum(v[5] for v in expected.values()) < sum(v[0] for v in expected.values())  # backfilled lines too


@pytest.mark.slow
def test_carrier_scorecard_brackets_transit_between_the_daily_observations(scenario):
    final = scenario["seen"][max(scenario["seen"])]
    story = observations(scenario)
    groups: dict[tuple, list] = {}
    for line_id, row in final.items():
        if row["status"] == "delivered":
            groups.setdefault((row["carrier"], week(row["order_date"])), []).append((line_id, row))
    expected = {}
    for key, members in groups.items():
        lead, low, high, widths, lead_bracketed = [], [], [], [], []
        for line_id, row in members:
            lead.append((row["delivery_date"] - row["order_date"]).total_seconds() / 86400)
            before = [t for t, s in story[line_id] if s not in (*WITH_CARRIER, *CLOSED)]
            handed = [t for t, s in story[line_id] if s in WITH_CARRIER]
            if before and handed and max(before) < min(handed):
                low.append((row["delivery_date"] - min(handed)).total_seconds() / 86400)
                high.append((row["delivery_date"] - max(before)).total_seconds() / 86400)
                widths.append((min(handed) - max(before)).total_seconds() / 86400)
                lead_bracketed.append(lead[-1])
        expected[key] = (
            len(members), quantile(lead, 0.5), quantile(lead, 0.9), len(low),
            quantile(low, 0.5) if low else None, quantile(high, 0.5) if high else None,
            statistics.mean(widths) if widths else None,
            sum(low) / sum(lead_bracketed) if low else None, sum(high) / sum(lead_bracketed) if low else None,
        )
    stored = {(row[0], row[1]): row[2:] for row in scenario["carrier"]}
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        assert stored[key] == pytest.approx(want, abs=1e-9), key
    bracketed = sum(v[3] for v in expected.values())
    assert bracketed > 100
    # Observations are a day apart: every bracket is exactly one day wide here.
    assert {round(v[6], 9) for v in expected.values() if v[6] is not None} == {1.0}


@pytest.mark.slow
def test_stuck_lines_are_exactly_the_lines_the_simulator_kept_in_one_status(scenario):
    """At each run: open lines the simulator did not move during the threshold, seen by the run that long ago."""
    checked = 0
    for moment, listed in scenario["stuck_tables"].items():
        since = moment - dt.timedelta(days=STUCK_AFTER)
        seen_then = scenario["seen"].get(since, {})
        expected = {line_id for line_id, row in scenario["seen"][moment].items()
                    if row["status"] not in CLOSED and line_id in seen_then
                    and not any(since < at <= moment for at, _ in scenario["timelines"][line_id])}
        assert listed == expected, moment
        checked += bool(expected)
    assert checked >= DAILY_RUNS - STUCK_AFTER
    worst = table(scenario["database"], "SELECT max(days_in_status), min(days_in_status) FROM stuck_lines")
    assert worst[0][1] >= STUCK_AFTER


@pytest.mark.slow
def test_every_new_table_is_commented_and_its_readme_query_answers_on_the_scenario(scenario):
    tables = ("open_order_backlog", "stuck_lines", "supplier_scorecard", "carrier_scorecard")
    uncommented = table(scenario["database"], f"""
        SELECT table_name, column_name FROM duckdb_columns()
        WHERE table_name IN {tables} AND (comment IS NULL OR comment = '')
        UNION ALL SELECT table_name, NULL FROM duckdb_tables() WHERE table_name IN {tables} AND comment IS NULL""")
    assert uncommented == []
    queries = {name: [q for q in analyst_queries() if f"FROM {name}" in q] for name in tables}
    assert all(len(found) == 1 for found in queries.values()), queries
    results = {name: table(scenario["database"], found[0]) for name, found in queries.items()}
    assert len(results["open_order_backlog"]) == DAILY_RUNS + 1  # one row per observed day
    assert all(rows for rows in results.values())


def test_thresholds_come_from_the_environment_and_a_bad_value_names_the_variable(monkeypatch):
    assert Settings.from_env().stuck_after_days == 5 and Settings.from_env().delivery_target_days == 7
    monkeypatch.setenv("ORDERSYNC_STUCK_AFTER_DAYS", "3")
    assert StuckLinesConfig().stuck_after_days == 3
    monkeypatch.setenv("ORDERSYNC_DELIVERY_TARGET_DAYS", "a week")
    with pytest.raises(ValueError, match="ORDERSYNC_DELIVERY_TARGET_DAYS must be a whole number >= 1, got 'a week'"):
        Settings.from_env().delivery_target_days
    monkeypatch.setenv("ORDERSYNC_STUCK_AFTER_DAYS", "0")
    with pytest.raises(ValueError, match="ORDERSYNC_STUCK_AFTER_DAYS must be a whole number >= 1, got '0'"):
        Settings.from_env().stuck_after_days
