"""`ordersync report`: the published analysts' file as one HTML page for people who never write SQL.

Headline figures (each with the SQL it shows), the charts the asset pages show, the worst suppliers and
the lines to chase. The page is self-contained: charts are inline SVG, styles inline, no script and no
network, so it opens from disk or as an e-mail attachment. The file is opened read-only.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from ordersync_pipeline.assets import charts
from ordersync_pipeline.assets.backlog import backlog_by_day, backlog_chart, longest_stuck
from ordersync_pipeline.assets.marts import lead_times_by_carrier
from ordersync_pipeline.assets.scorecards import recent_supplier_figures, worst_suppliers
from ordersync_pipeline.settings import Settings

# Tables the page reads; a file without them is not (a current) analysts' file.
REQUIRED_TABLES = ("published_snapshot", "order_statuses", "delivery_lead_times", "open_orders",
                   "open_order_backlog", "stuck_lines", "supplier_scorecard")
TABLE_ROWS = 50


@dataclass(frozen=True)
class Headline:
    label: str
    sql: str  # one value; shown under the figure so anyone can check it


HEADLINES = (
    Headline("order lines held", "SELECT count(*) FROM order_statuses"),
    Headline("lines open", "SELECT count(*) FROM open_orders"),
    Headline("open lines older than 7 days", "SELECT count(*) FROM open_orders WHERE age_days > 7"),
    Headline("lines stuck in one status", "SELECT count(*) FROM stuck_lines"),
    Headline("median lead time, days", "SELECT round(quantile_cont(lead_time_days, 0.5), 1) FROM delivery_lead_times"),
    Headline("90th-percentile lead time, days",
             "SELECT round(quantile_cont(lead_time_days, 0.9), 1) FROM delivery_lead_times"),
)


class ReportError(Exception):
    """The database cannot be reported on; the message says why and what to do."""


def default_output(database: str | Path) -> Path:
    """Beside the database: data/ordersync.duckdb -> data/ordersync-report.html."""
    database = Path(database)
    return database.with_name(f"{database.stem}-report.html")


def write_report(database: str | Path, output: str | Path | None = None) -> Path:
    """Write the HTML page for `database` (read-only) to `output` (default beside it); return its path.

    `database` may be a published object-storage URL (s3://…/ordersync.duckdb or one of its versions): it is
    downloaded to a temporary file first (the pipeline's DuckDB has no httpfs), and the page is written to
    the current folder by default.
    """
    if "://" in str(database):
        return _write_report_from_url(str(database), output)
    database = Path(database).resolve()
    output = Path(output) if output else default_output(database)
    return _write_page(render_report(database), output)


def _write_report_from_url(url: str, output: str | Path | None) -> Path:
    import tempfile

    from ordersync_pipeline.storage.object_storage import UploadError, PublishSettingError, download

    output = Path(output) if output else Path(default_output(Path(url.rsplit("/", 1)[-1])).name)
    with tempfile.TemporaryDirectory(prefix="ordersync-report-") as folder:
        local = Path(folder) / "snapshot.duckdb"
        try:
            download(url, str(local))
        except PublishSettingError as exc:
            raise ReportError(f"--database {url}: {str(exc).split(': ', 1)[-1]}") from None
        except UploadError as exc:
            raise ReportError(f"--database {url}: {exc}") from None
        return _write_page(render_report(local, source=url), output)


def _write_page(page: str, output: Path) -> Path:
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, output)  # a reader never sees half a page
    return output


def render_report(database: Path, source: str | None = None) -> str:
    with _open(database) as conn:
        snapshot = pl.DataFrame(conn.sql("SELECT * FROM published_snapshot")).row(0, named=True)
        target = conn.execute("SELECT any_value(delivery_target_days) FROM supplier_scorecard").fetchall()[0][0]
        target = target or Settings.from_env().delivery_target_days
        headlines = [(h, _format(conn.execute(h.sql).fetchall()[0][0])) for h in HEADLINES]
        figures = [
            ("Lead time by carrier", "How long delivered lines took from order to delivery, with the median (p50) "
             "and the 90th percentile (p90) marked.", charts.lead_time_distribution(lead_times_by_carrier(conn), "svg")),
            ("Open backlog by day", "Open lines at the end of each observed day, by how long they had been open.",
             backlog_chart(backlog_by_day(conn), "svg")),
            ("Suppliers", f"Lines ordered in the last four weeks: 90th-percentile lead time (target {target} days) "
             "and the share cancelled.", charts.supplier_scorecard(recent_supplier_figures(conn), target, "svg")),
        ]
        tables = [
            ("Worst suppliers, last four weeks", "Least often delivered within target first. Rates are shares "
             "(0.25 = 25%).", worst_suppliers(conn)),
            ("Stuck lines", "Open lines observed in one status the longest: chase these first.",
             longest_stuck(conn, TABLE_ROWS)),
            ("Late open lines", f"Open for more than the {target}-day delivery target, oldest first.",
             pl.DataFrame(conn.sql(
                 "SELECT po_number, supplier, status, age_days, order_date FROM open_orders WHERE age_days > $target "
                 "ORDER BY age_days DESC, order_date, order_status_id LIMIT $limit",
                 params={"target": target, "limit": TABLE_ROWS}))),
        ]
        counts = {"Stuck lines": conn.execute("SELECT count(*) FROM stuck_lines").fetchall()[0][0],
                  "Late open lines": conn.execute("SELECT count(*) FROM open_orders WHERE age_days > $target",
                                                  {"target": target}).fetchall()[0][0]}
    return _page(source or database, snapshot, headlines, figures, tables, counts)


def _open(database: Path) -> duckdb.DuckDBPyConnection:
    if not database.is_file():
        raise ReportError(f"no database file at {database}: pass --database PATH or set ORDERSYNC_DUCKDB_PATH to the "
                          "analysts' file the pipeline publishes")
    try:
        conn = duckdb.connect(str(database), read_only=True)
    except duckdb.Error as exc:
        raise ReportError(f"{database} is not a DuckDB file this DuckDB can open ({str(exc).splitlines()[0]}); pass "
                          "--database PATH with the analysts' file the pipeline publishes (ORDERSYNC_DUCKDB_PATH)") from exc
    present = {name for (name,) in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    missing = [table for table in REQUIRED_TABLES if table not in present]
    if missing:
        conn.close()
        raise ReportError(f"{database} is not a published analysts' file (no table {', '.join(missing)}): pass "
                          "--database PATH with the file ORDERSYNC_DUCKDB_PATH names, once a run has published it")
    return conn


def _format(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _inline_svg(svg: bytes) -> str:
    """matplotlib's SVG document as an element: without its XML prolog and DOCTYPE."""
    text = svg.decode()
    return text[text.index("<svg"):]


def _table(frame: pl.DataFrame) -> str:
    if frame.is_empty():
        return "<p class='none'>None.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in frame.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell(value: object) -> str:
    if isinstance(value, dt.datetime):
        return _when(value)
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return html.escape("" if value is None else str(value))


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 62rem; padding: 0 1rem; color: #222; }
h1 { margin-bottom: .2rem; } .asof { color: #555; margin-top: 0; }
.headlines { display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); gap: .8rem; }
.headline { border: 1px solid #ddd; border-radius: 6px; padding: .7rem; }
.headline .value { font-size: 1.8rem; font-weight: 600; display: block; }
.headline details { font-size: .75rem; color: #555; } .headline pre { white-space: pre-wrap; }
figure { margin: 1.5rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; margin-bottom: .4rem; }
table { border-collapse: collapse; font-size: .85rem; margin-bottom: .4rem; }
th, td { border-bottom: 1px solid #eee; padding: .25rem .6rem; text-align: left; } th { background: #f5f5f5; }
.more, .none { color: #555; font-size: .85rem; }
"""


def _page(database: Path | str, snapshot: dict, headlines: list, figures: list, tables: list, counts: dict) -> str:
    esc = html.escape
    headline_html = "".join(
        f"<div class='headline'><span class='value'>{esc(value)}</span><span class='label'>{esc(h.label)}</span>"
        f"<details><summary>SQL</summary><pre class='sql'>{esc(h.sql)}</pre></details></div>"
        for h, value in headlines)
    figure_html = "".join(f"<figure><h2>{esc(title)}</h2><figcaption>{esc(caption)}</figcaption>{_inline_svg(svg)}"
                          "</figure>" for title, caption, svg in figures)
    table_html = ""
    for title, caption, frame in tables:
        total = counts.get(title)
        more = (f"<p class='more'>{total - frame.height:,} more in the table.</p>"
                if total is not None and total > frame.height else "")
        table_html += f"<section><h2>{esc(title)}</h2><p>{esc(caption)}</p>{_table(frame)}{more}</section>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>OrderSync report as of {esc(str(snapshot["as_of_day"]))}</title><style>{STYLE}</style></head>
<body>
<h1>OrderSync order status report</h1>
<p class="asof">As of <strong id="as-of">{esc(_when(snapshot["published_at"]))}</strong>
(marts as of day {esc(str(snapshot["as_of_day"]))}; orders {esc(str(snapshot["first_order_day"]))} to
{esc(str(snapshot["last_order_day"]))}). Source: <code id="source">{esc(str(database))}</code>.</p>
<div class="headlines">{headline_html}</div>
{figure_html}
{table_html}
</body></html>
"""
