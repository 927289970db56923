"""`ordersync demo`'s history: several simulated mornings of `daily_order_sync`, then what they built.

The pipeline's history tables (status spells, the backlog per day, stuck lines, weekly scorecards) only fill
up as the pipeline observes the API morning after morning. The demo plays those mornings against the embedded
simulator, whose clock it sets to 06:00 UTC of each day (the schedule's time) before running that morning's
partition, the day that just ended. What it does not do: wait for real time, or run the schedule itself —
each morning is one in-process run, as `dg launch --job daily_order_sync --partition D` would be.
"""

import datetime as dt
import time
from collections.abc import Callable

from ordersync_pipeline.simulator.server import OrderSyncSimulator

SCHEDULE_HOUR = 6  # daily_order_sync_schedule ticks at 06:00 UTC


def morning_of(day: dt.date) -> dt.datetime:
    """When the schedule runs the partition `day`: 06:00 UTC the day after."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(SCHEDULE_HOUR), dt.timezone.utc)


def play_mornings(sim: OrderSyncSimulator, days: list[dt.date], run_day: Callable[[dt.date], bool],
                  describe: Callable[[], str]) -> bool:
    """For each of `days`: set the simulator's clock to that morning, run the day, print one line."""
    for day in days:
        sim.clock.set(morning_of(day))
        started = time.monotonic()
        if not run_day(day):
            print(f"  {morning_of(day):%Y-%m-%d %H:%M} UTC  daily_order_sync {day}: FAILED", flush=True)
            return False
        print(f"  {morning_of(day):%Y-%m-%d %H:%M} UTC  daily_order_sync {day}: {time.monotonic() - started:.1f} s, "
              f"{describe()}", flush=True)
    return True


def morning_figures(database: str) -> str:
    """One morning's line: the backlog it wrote and what is stuck, from the published file."""
    import duckdb

    with duckdb.connect(database, read_only=True) as conn:
        (open_lines, stuck, spells) = conn.execute(
            "SELECT (SELECT sum(open_lines) FROM open_order_backlog "
            "        WHERE as_of_day = (SELECT max(as_of_day) FROM open_order_backlog)), "
            "(SELECT count(*) FROM stuck_lines), (SELECT count(*) FROM order_status_history)").fetchall()[0]
    return f"{open_lines or 0} open lines, {stuck} stuck, {spells} status spells"


def history_summary(database: str) -> str:
    """The backlog trend, the lines stuck longest and how much history there is."""
    import duckdb
    import polars as pl

    with pl.Config(tbl_rows=40, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_width_chars=120), \
            duckdb.connect(database, read_only=True) as conn:
        sections = [
            ("Backlog trend (open lines per observed day)",
             "SELECT as_of_day, sum(open_lines) AS open_lines, "
             "sum(open_lines) FILTER (WHERE age_bucket NOT IN ('0-2', '3-7')) AS older_than_7_days "
             "FROM open_order_backlog GROUP BY 1 ORDER BY 1"),
            ("Top stuck lines", "SELECT po_number, supplier, status, days_in_status, "
                                "strftime(timezone('UTC', status_since), '%Y-%m-%d %H:%M UTC') AS since "
                                "FROM stuck_lines ORDER BY days_in_status DESC, po_number LIMIT 10"),
            ("History", "SELECT count(*) AS status_spells, count(DISTINCT order_status_id) AS lines, "
                        "(SELECT count(*) FROM (SELECT order_status_id FROM order_status_history GROUP BY 1 "
                        " HAVING count(*) >= 2)) AS lines_with_2_or_more_spells, "
                        "(SELECT count(DISTINCT order_week) FROM supplier_scorecard) AS scorecard_weeks "
                        "FROM order_status_history"),
        ]
        return "\n\n".join(f"{title}:\n{pl.DataFrame(conn.sql(sql))}" for title, sql in sections)
