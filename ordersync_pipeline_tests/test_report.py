"""`ordersync report` on a published analysts' file, in Chromium from disk; and every column we create commented."""

import base64
import datetime as dt
import re

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.cli import main
from ordersync_pipeline.reporting.report import HEADLINES, default_output
from ordersync_pipeline_tests.browser import chromium_page

@pytest.fixture(scope="module")
def files(observed_history):
    """A working file and the analysts' file published from it: a backfill, then a week of daily runs."""
    return observed_history


@pytest.mark.parametrize("asset, key", [("delivery_lead_times", "lead_time_distribution"),
                                        ("open_order_backlog", "backlog_chart"), ("supplier_scorecard", "scorecard_chart")])
def test_each_chart_rides_on_its_assets_materialization_as_a_markdown_png(files, asset, key):
    latest = files[2].get_latest_materialization_event(dg.AssetKey(asset))  # the last morning's run
    markdown = latest.asset_materialization.metadata[key].value
    found = re.fullmatch(r"!\[[^\]]+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert found, markdown[:200]
    assert base64.b64decode(found[1]).startswith(b"\x89PNG\r\n\x1a\n")


def one_value(database: str, sql: str):
    with duckdb.connect(database, read_only=True) as conn:
        return conn.execute(sql).fetchall()[0][0]


@pytest.mark.parametrize("which", ["working", "published"])
def test_every_column_of_every_table_we_create_has_a_comment(files, which):
    database = files[0] if which == "working" else files[1]
    with duckdb.connect(database, read_only=True) as conn:
        tables = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE NOT internal").fetchall()[0][0]
        uncommented = conn.execute("""
            SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal AND (comment IS NULL OR comment = '')
            UNION ALL
            SELECT table_name, '(the table)' FROM duckdb_tables() WHERE NOT internal AND (comment IS NULL OR comment = '')
            ORDER BY ALL""").fetchall()
    assert tables >= 14  # raw tables, marts and published_snapshot
    assert uncommented == []


def test_report_defaults_to_the_analysts_file_and_writes_beside_it(files, monkeypatch, capsys):
    published = files[1]
    monkeypatch.setenv("ORDERSYNC_DUCKDB_PATH", published)
    assert main(["report"]) == 0
    output = default_output(published)
    assert output.name == "ordersync-report.html" and output.parent == default_output(published).parent
    assert str(output) in capsys.readouterr().out
    page = output.read_text()
    assert published in page and "<script" not in page
    # Nothing to fetch: no external src/href/url() (SVG namespace URIs are names, not requests).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?(https?:|//)|@import""", page)


@pytest.mark.parametrize("make, says", [
    (lambda tmp: tmp / "missing.duckdb", "no database file at"),
    (lambda tmp: (tmp / "notes.txt").write_text("not a database") and tmp / "notes.txt", "is not a DuckDB file"),
    (lambda tmp: duckdb.connect(str(tmp / "empty.duckdb")).close() or tmp / "empty.duckdb",
     "is not a published analysts' file (no table published_snapshot, order_statuses"),
])
def test_report_on_a_wrong_file_fails_in_one_line_saying_what_to_pass(tmp_path, capsys, make, says):
    assert main(["report", "--database", str(make(tmp_path)), "--output", str(tmp_path / "r.html")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and says in error and "--database" in error and error.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow  # starts Chromium
def test_the_report_opens_from_disk_with_every_chart_visible_and_figures_equal_to_their_sql(files, tmp_path):
    published = files[1]
    output = tmp_path / "report.html"
    assert main(["report", "--database", published, "--output", str(output)]) == 0
    errors: list[str] = []
    with chromium_page(tmp_path / "screenshots", console_errors=errors) as steps:
        page = steps.page
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(output.as_uri())
        steps.shot("report")
        charts = page.locator("figure svg")
        assert charts.count() == 3
        for i in range(3):
            chart = charts.nth(i)
            chart.scroll_into_view_if_needed()
            assert chart.is_visible()
            box = chart.bounding_box()
            assert box["width"] > 300 and box["height"] > 100
            assert chart.locator("path, rect, line").count() > 20  # drawn, not an empty frame
        steps.shot("charts")

        shown = [(h.locator(".label").inner_text(), h.locator(".value").inner_text(), h.locator("pre.sql").text_content())
                 for h in page.locator(".headline").all()]
        assert [label for label, _, _ in shown] == [h.label for h in HEADLINES]
        for label, value, sql in shown:
            assert sql == next(h.sql for h in HEADLINES if h.label == label)
            assert float(value.replace(",", "")) == pytest.approx(float(one_value(published, sql))), label
        # And against SQL written here, not taken from the page.
        figures = {label: float(value.replace(",", "")) for label, value, _ in shown}
        assert figures["order lines held"] == one_value(published, "SELECT count(*) FROM order_statuses") > 0
        assert figures["lines open"] == one_value(published, """
            SELECT count(*) FROM order_statuses WHERE lower(trim(coalesce(status, ''))) NOT IN ('delivered', 'cancelled')
              AND order_day <= (SELECT as_of_day FROM published_snapshot)""")
        assert figures["90th-percentile lead time, days"] == round(one_value(published, """
            SELECT quantile_cont(epoch(delivery_date - order_date) / 86400, 0.9) FROM order_statuses
            WHERE lower(status) = 'delivered' AND delivery_date >= order_date"""), 1)

        published_at = one_value(published, "SELECT published_at FROM published_snapshot")
        assert page.locator("#as-of").inner_text() == published_at.astimezone(dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
        assert page.locator("#source").inner_text() == published
        tables = {h.inner_text(): h for h in page.locator("section h2").all()}
        assert set(tables) == {"Worst suppliers, last four weeks", "Stuck lines", "Late open lines"}
        stuck = one_value(published, "SELECT count(*) FROM stuck_lines")
        assert stuck > 0, "the fixture must have stuck lines for this comparison to mean anything"
        rows = page.locator("section").filter(has_text="Stuck lines").locator("tbody tr").count()
        assert rows == min(stuck, 50)
        assert re.search(r"\d", page.locator("section").filter(has_text="Worst suppliers").locator("tbody").inner_text())
    assert errors == []
    assert all(url.startswith("file://") for url in requests), requests  # nothing from the network
