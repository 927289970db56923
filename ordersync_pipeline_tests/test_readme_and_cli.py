"""What a new user does from the README: the two commands, the demo, the analyst queries, the CLI."""

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from ordersync_pipeline.cli import main
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline_tests.support import README, ROOT, analyst_queries


def readme_top_commands() -> list[str]:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in first_block.splitlines() if line.strip()]


def test_readme_opens_with_the_demo_and_test_commands_and_ci_runs_the_test_one():
    demo, tests = readme_top_commands()
    assert demo.endswith("ordersync demo") and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


@pytest.fixture(scope="module")
def demo_database(tmp_path_factory):
    """`ordersync demo` run as the README runs it: a separate process, no options, no key in the environment,
    in a fresh folder (it writes data/demo.duckdb there)."""
    folder = tmp_path_factory.mktemp("demo")
    demo_command = readme_top_commands()[0].split("&&")[-1].split()
    assert demo_command == ["ordersync", "demo"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSYNC_")}
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "ordersync_pipeline.cli", *demo_command[1:]],
                               capture_output=True, text=True, timeout=300, env=env, cwd=folder)
    seconds = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr[-3000:]
    print(f"ordersync demo: {seconds:.1f} s, load average {os.getloadavg()[0]:.1f}")
    return folder / "data" / "demo.duckdb", completed.stdout + completed.stderr


@pytest.mark.slow
def test_the_demo_loads_days_builds_marts_and_prints_a_summary(demo_database):
    database, output = demo_database
    for heading in ("Rows per day", "Statuses", "Lead time by carrier", "Open lines by age", f"DuckDB file: {database}"):
        assert heading in output
    assert "Warning" not in output and "WARNING" not in output  # no BetaWarning, no framework or run warning
    oldest = output.split("Open lines by age")[1].split("DuckDB file")[0]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC ", oldest) and not re.search(r":\d\d\.\d", oldest)
    # progress of the first load: every 5 s and at the last day, covering the days since the previous line
    assert re.search(r"\[(\d+)/\1 days\] (\d{4}-\d\d-\d\d\.\.)?\d{4}-\d\d-\d\d: stored \d+ lines", output)
    assert SIMULATOR_API_KEY not in output
    with duckdb.connect(str(database), read_only=True) as conn:
        days = conn.execute("SELECT count(DISTINCT order_day) FROM order_statuses").fetchall()[0][0]
        marts = [conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                 for t in ("delivery_lead_times", "open_orders", "open_order_summary", "delivery_lead_time_summary")]
    assert days >= 14 and all(count > 0 for count in marts)


@pytest.mark.slow
def test_the_demo_plays_mornings_so_the_published_file_has_history(demo_database):
    database, output = demo_database
    mornings = re.findall(r"^  (\d{4}-\d\d-\d\d) 06:00 UTC  daily_order_sync (\d{4}-\d\d-\d\d): [\d.]+ s, ", output, re.M)
    assert len(mornings) == 6
    for clock_day, partition in mornings:  # each morning runs the day that just ended
        assert dt.date.fromisoformat(clock_day) - dt.date.fromisoformat(partition) == dt.timedelta(days=1)
    for heading in ("Backlog trend", "Top stuck lines", "lines_with_2_or_more_spells"):
        assert heading in output
    with duckdb.connect(str(database), read_only=True) as conn:
        backlog_days, stuck, lines_with_spells, weeks = conn.execute(
            "SELECT (SELECT count(DISTINCT as_of_day) FROM open_order_backlog), (SELECT count(*) FROM stuck_lines), "
            "(SELECT count(*) FROM (SELECT order_status_id FROM order_status_history GROUP BY 1 HAVING count(*) >= 2)), "
            "(SELECT count(DISTINCT order_week) FROM supplier_scorecard)").fetchall()[0]
    assert backlog_days >= 7 and stuck >= 1 and lines_with_spells >= 1 and weeks >= 2


def open_lines_older_than_a_week(lines: pl.DataFrame) -> pl.DataFrame:
    """The README's open rule in polars: not delivered or cancelled (any case, spaces ignored), age > 7 days
    as of the last loaded day."""
    as_of = lines["order_day"].max()
    status = pl.col("status").fill_null("").str.strip_chars().str.to_lowercase()
    return (lines.filter(~status.is_in(["delivered", "cancelled"]))
            .with_columns(age_days=(pl.lit(as_of) - pl.col("order_day")).dt.total_days())
            .filter(pl.col("age_days") > 7))


def check_late_orders_by_supplier(rows: list[tuple], read) -> None:
    lines = read("order_statuses")
    late = open_lines_older_than_a_week(lines).group_by("supplier").agg(pl.len(), pl.col("order_date").min())
    assert {supplier: (n, oldest) for supplier, n, oldest in rows} == {
        supplier: (n, oldest) for supplier, n, oldest in late.iter_rows()}
    assert [n for _, n, _ in rows] == sorted((n for _, n, _ in rows), reverse=True)


def check_p90_lead_time_by_carrier(rows: list[tuple], read) -> None:
    lines = read("order_statuses")
    delivered = lines.filter(
        (pl.col("status").str.strip_chars().str.to_lowercase() == "delivered")
        & (pl.col("delivery_date") >= pl.col("order_date"))
    ).with_columns(lead=(pl.col("delivery_date") - pl.col("order_date")).dt.total_microseconds() / 86_400e6)
    expected = delivered.group_by("carrier").agg(pl.len(), pl.col("lead").quantile(0.9, "linear"))
    expected = {carrier: (n, p90) for carrier, n, p90 in expected.iter_rows()}
    assert {carrier: n for carrier, n, _ in rows} == {carrier: n for carrier, (n, _) in expected.items()}
    assert all(abs(p90 - expected[carrier][1]) <= 0.005 + 1e-9 for carrier, _, p90 in rows)
    assert [p90 for _, _, p90 in rows] == sorted(p90 for _, _, p90 in rows)


def check_oldest_open_orders(rows: list[tuple], read) -> None:
    lines = read("order_statuses")
    expected = open_lines_older_than_a_week(lines).sort("order_date").select(
        "order_id", "po_number", "supplier", "status", "order_date", "age_days")
    assert len(rows) == min(50, expected.height)
    # Lines of one order share order_date, so which of them make the 50th place is arbitrary: compare the dates.
    assert [row[4] for row in rows] == expected["order_date"].head(50).to_list()
    assert set(rows) <= set(expected.iter_rows())


def check_backordered_durations(rows: list[tuple], read) -> None:
    history = read("order_status_history")
    expected = history.filter(pl.col("status") == "backordered").select(
        "order_status_id", (pl.col("last_seen_at") - pl.col("first_seen_at")).alias("duration"))
    longest = sorted(expected["duration"].to_list(), reverse=True)[:20]
    assert [duration for _, duration in rows] == longest
    assert set(rows) <= set(expected.iter_rows())


CLOSED = ["delivered", "cancelled"]


def status_key(column: str = "status") -> pl.Expr:
    return pl.col(column).fill_null("").str.strip_chars().str.to_lowercase()


def utc_date(column: str) -> pl.Expr:
    return pl.col(column).dt.convert_time_zone("UTC").dt.date()


def check_backlog_trend(rows: list[tuple], read) -> None:
    """Each observed morning's open lines, from history: a run on day D+1 pictures day D; a line counts if it was
    ordered by D, seen by then, and its status at that observation (its latest spell begun by then) is open."""
    history, lines = read("order_status_history"), read("order_statuses").select("order_status_id", "order_day")
    observations = sorted(set(history["first_seen_at"].to_list()) | set(history["last_seen_at"].to_list()))
    mornings = {}
    for moment in observations:  # the last observation of each UTC day
        mornings[moment.astimezone(dt.timezone.utc).date()] = moment
    expected = []
    for day_after, moment in sorted(mornings.items()):
        day = day_after - dt.timedelta(days=1)
        status_then = (history.filter(pl.col("first_seen_at") <= moment).sort("first_seen_at")
                       .group_by("order_status_id").last().join(lines, on="order_status_id")
                       .filter((pl.col("order_day") <= day) & ~status_key().is_in(CLOSED)))
        older = status_then.filter((pl.lit(day) - pl.col("order_day")).dt.total_days() > 7).height
        expected.append((day, status_then.height, older))
    assert len(expected) >= 7, "the scenario needs a week of observed mornings"
    assert [(row[0], row[1], row[3] or 0) for row in rows] == expected
    changes = [None] + [b[1] - a[1] for a, b in zip(expected, expected[1:])]
    assert [row[2] for row in rows] == changes


def delivered_lines(read) -> pl.DataFrame:
    """Delivered lines (not 'before' their order) with lead time in days and UTC week of order, from order_statuses."""
    return read("order_statuses").filter(
        (status_key() == "delivered") & (pl.col("delivery_date") >= pl.col("order_date"))
    ).with_columns(lead=(pl.col("delivery_date") - pl.col("order_date")).dt.total_microseconds() / 86_400e6,
                   order_week=utc_date("order_date").dt.truncate("1w"))


def check_suppliers_getting_slower(rows: list[tuple], read) -> None:
    lines = read("order_statuses").with_columns(order_week=utc_date("order_date").dt.truncate("1w"))
    recent_from = lines["order_week"].max() - dt.timedelta(days=21)
    # Weekly medians weighted by the week's delivered lines (status delivered, lead time usable or not).
    weights = lines.filter(status_key() == "delivered").group_by("supplier", "order_week").agg(pl.len().alias("n"))
    weekly = (delivered_lines(read).filter(pl.col("order_week") >= recent_from - dt.timedelta(days=28))
              .group_by("supplier", "order_week")
              .agg(pl.col("lead").quantile(0.5, "linear").alias("p50"),
                   ((pl.col("lead") <= 7).sum() / pl.len()).alias("within"))
              .join(weights, on=["supplier", "order_week"]))
    suppliers = set(lines.filter(pl.col("order_week") >= recent_from - dt.timedelta(days=28))["supplier"])
    expected = {}
    for supplier in suppliers:
        mine = weekly.filter(pl.col("supplier") == supplier)
        recent, earlier = mine.filter(pl.col("order_week") >= recent_from), mine.filter(pl.col("order_week") < recent_from)
        def weighted(group):
            return round((group["p50"] * group["n"]).sum() / group["n"].sum(), 2) if group.height else None
        expected[supplier] = (weighted(recent), weighted(earlier), round(recent["within"].mean(), 3) if recent.height else None)
    assert {row[0] for row in rows} == suppliers
    for supplier, *figures in rows:
        for got, want in zip(figures, expected[supplier]):
            assert (got is None and want is None) or abs(got - want) <= 0.0011 + 0.01 * (want > 1), (supplier, got, want)


def check_carrier_transit(rows: list[tuple], read) -> None:
    """The hand-over bracket from history: after the last observation before shipping, no later than the first
    observation shipped or in transit (and not after delivery)."""
    history = read("order_status_history")
    before = history.filter(~status_key().is_in(["shipped", "in_transit", *CLOSED])).group_by("order_status_id").agg(
        pl.col("last_seen_at").max().alias("before"))
    carried = history.filter(status_key().is_in(["shipped", "in_transit"])).group_by("order_status_id").agg(
        pl.col("first_seen_at").min().alias("carried"))
    days = 86_400e6
    lines = (delivered_lines(read).join(before, on="order_status_id", how="left").join(carried, on="order_status_id", how="left")
             .with_columns(bracketed=(pl.col("before") < pl.col("carried")) & (pl.col("carried") <= pl.col("delivery_date")))
             .with_columns(low=pl.when("bracketed").then((pl.col("delivery_date") - pl.col("carried")).dt.total_microseconds() / days),
                           high=pl.when("bracketed").then((pl.col("delivery_date") - pl.col("before")).dt.total_microseconds() / days)))
    weekly = lines.group_by("carrier", "order_week").agg(
        pl.len().alias("n"), pl.col("bracketed").fill_null(False).sum().alias("b"),
        pl.col("low").quantile(0.5, "linear").alias("p50_low"), pl.col("high").quantile(0.5, "linear").alias("p50_high"),
        (pl.col("high") - pl.col("low")).mean().alias("width"))
    expected = {c: (g["n"].sum(), g["b"].sum(), g["p50_low"].max(), g["p50_high"].max(), g["width"].mean())
                for (c,), g in weekly.group_by("carrier")}
    assert sum(v[1] for v in expected.values()) > 0, "the scenario needs bracketed hand-overs"
    assert {row[0]: tuple(row[1:3]) for row in rows} == {c: v[:2] for c, v in expected.items()}
    for carrier, _, _, low, high, width in rows:
        for got, want in zip((low, high, width), expected[carrier][2:]):
            assert (got is None and want is None) or abs(got - want) <= 0.005 + 1e-9, (carrier, got, want)


def check_stuck_lines_summary(rows: list[tuple], read) -> None:
    """Open lines whose current status was first observed 5 or more UTC days before the latest observation."""
    history, lines = read("order_status_history"), read("order_statuses")
    latest = history["last_seen_at"].max().astimezone(dt.timezone.utc).date()
    current = history.sort("first_seen_at").group_by("order_status_id").last()
    stuck = (lines.filter(~status_key().is_in(CLOSED)).join(current.select("order_status_id", "first_seen_at"),
                                                            on="order_status_id")
             .with_columns(days=(pl.lit(latest) - utc_date("first_seen_at")).dt.total_days())
             .filter(pl.col("days") >= 5))
    assert stuck.height > 0, "the scenario needs stuck lines"
    ((count, longest, supplier, since),) = rows
    assert (count, longest, since) == (stuck.height, stuck["days"].max(), stuck["first_seen_at"].min())
    by_supplier = stuck.group_by("supplier").len()
    assert supplier in by_supplier.filter(pl.col("len") == by_supplier["len"].max())["supplier"].to_list()


def check_published_snapshot(rows: list[tuple], read) -> None:
    lines = read("order_statuses")
    ((published_at, as_of_day, first_day, last_day, order_lines),) = rows
    assert (first_day, last_day, order_lines) == (lines["order_day"].min(), lines["order_day"].max(), lines.height)
    assert as_of_day == last_day  # the daily run of the last loaded day built the marts
    assert published_at.tzinfo is not None and published_at.microsecond == 0  # it names the version, to the second


# Each README query (known by a phrase in it), checked against the same figure computed here in polars from
# order_statuses and order_status_history only, independently of the marts the query reads.
INDEPENDENT_CHECKS = {
    "AS late_lines": check_late_orders_by_supplier,
    "AS p90_days": check_p90_lead_time_by_carrier,
    "LIMIT 50": check_oldest_open_orders,
    "AS observed_backordered_for": check_backordered_durations,
    "FROM published_snapshot": check_published_snapshot,
    "FROM open_order_backlog": check_backlog_trend,
    "FROM supplier_scorecard": check_suppliers_getting_slower,
    "FROM carrier_scorecard": check_carrier_transit,
    "FROM stuck_lines": check_stuck_lines_summary,
}


@pytest.mark.slow
@pytest.mark.parametrize("query", analyst_queries())
def test_readme_analyst_queries_match_figures_computed_from_the_raw_tables(observed_history, query):
    _, database, _ = observed_history
    with duckdb.connect(str(database), read_only=True) as conn:
        rows = conn.sql(query).fetchall()
        assert rows, f"README query returned nothing on a week of observed history:\n{query}"
        checks = [check for phrase, check in INDEPENDENT_CHECKS.items() if phrase in query]
        assert len(checks) == 1, f"no independent check (or several) for this README query:\n{query}"
        checks[0](rows, lambda table: conn.sql(f"SELECT * FROM {table}").pl())


def test_there_are_readme_queries_for_each_analyst_question():
    joined = "\n".join(analyst_queries())
    assert len(analyst_queries()) >= 3
    assert "quantile_cont(lead_time_days, 0.9)" in joined and "age_days > 7" in joined


def test_lookup_by_po_in_the_simulator_prints_a_table_and_json(simulator, capsys, monkeypatch):
    record = simulator.records_for_days(simulator.first_day, simulator.first_day)[0]
    monkeypatch.setenv("ORDERSYNC_API_KEY", SIMULATOR_API_KEY)
    monkeypatch.setenv("ORDERSYNC_BASE_URL", simulator.base_url)
    assert main(["lookup", "po", record["po_number"]]) == 0
    table = capsys.readouterr().out
    assert record["order_status_id"] in table and "line(s)." in table
    assert record["customer_email"] not in table  # personal data stays out of the readable table
    assert main(["lookup", "supplier-order", record["supplier_order_id"], "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert record in records and all(r["supplier_order_id"] == record["supplier_order_id"] for r in records)


def test_lookup_without_a_key_says_what_to_do(capsys, monkeypatch):
    monkeypatch.delenv("ORDERSYNC_API_KEY", raising=False)
    assert main(["lookup", "po", "AB1"]) == 2
    assert "ORDERSYNC_API_KEY is not set" in capsys.readouterr().err


def test_lookup_with_a_wrong_key_is_a_clear_error(simulator, capsys, monkeypatch):
    monkeypatch.setenv("ORDERSYNC_API_KEY", "pk_live_wrong_key_123")
    monkeypatch.setenv("ORDERSYNC_BASE_URL", simulator.base_url)
    assert main(["lookup", "po", "AB1"]) == 2
    err = capsys.readouterr().err
    assert "refused the API key" in err and "pk_live_wrong_key_123" not in err


def test_every_way_of_starting_the_ui_names_one_code_location():
    import tomllib

    import yaml

    from ordersync_pipeline.cli import WORKSPACE

    def location(path: Path) -> tuple[str, str]:
        (entry,) = yaml.safe_load(path.read_text())["load_from"]
        return entry["python_module"]["module_name"], entry["python_module"]["location_name"]

    tools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    dagster_settings, dg_project = tools["dagster"], tools["dg"]["project"]  # `dagster dev` / `dg dev` in the root
    assert location(ROOT / "workspace.yaml") == location(WORKSPACE) == (
        dagster_settings["module_name"], dagster_settings["code_location_name"]) == (
        dg_project["code_location_target_module"], dg_project["code_location_name"]) == (
        "ordersync_pipeline.definitions", "ordersync_pipeline")
    # Production's code server (README) is the same module under the same name, through the shipped workspace file.
    (served,) = yaml.safe_load(WORKSPACE.with_name("workspace-code-server.yaml").read_text())["load_from"]
    assert served["grpc_server"]["location_name"] == "ordersync_pipeline"
    assert "dagster code-server start -m ordersync_pipeline.definitions " in README
