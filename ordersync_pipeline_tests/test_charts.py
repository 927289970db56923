"""Charts: equal-width bins, percentiles marked where they are, images that open, the same bytes twice."""

import datetime as dt
import io
import re

import polars as pl
import pytest

from ordersync_pipeline.assets import charts
from ordersync_pipeline.vocabulary import AGE_BUCKET_LABELS


@pytest.mark.parametrize("longest", [0.0, 0.4, 6.9, 13.2, 39.99, 40.0, 95.5, 1000.0])
def test_lead_time_bins_are_equal_whole_days_and_cover_the_longest(longest):
    edges = charts.lead_time_bin_edges(longest)
    widths = {high - low for low, high in zip(edges, edges[1:])}
    assert edges[0] == 0 and len(widths) == 1 and all(isinstance(e, int) for e in edges)
    assert edges[-2] <= longest < edges[-1]
    assert len(edges) - 1 <= charts.MAX_BINS
    if longest < charts.MAX_BINS:
        assert widths == {1}


def lead_times() -> pl.DataFrame:
    return pl.DataFrame({"carrier": ["ups"] * 11 + ["dhl"] * 4 + [None],
                         "lead_time_days": [float(d) for d in range(11)] + [1.0, 2.0, 3.0, 30.0] + [5.0]})


def test_the_lead_time_chart_has_a_panel_per_carrier_with_p50_and_p90_where_duckdb_puts_them():
    svg = charts.lead_time_distribution(lead_times(), "svg").decode()
    # ups: 0..10 -> p50 5.0, p90 9.0 (linear, as quantile_cont); dhl: 1, 2, 3, 30 -> p50 2.5, p90 21.9
    for label in ("ups  (11 delivered)", "p50 5.0 d", "p90 9.0 d", "dhl  (4 delivered)", "p50 2.5 d", "p90 21.9 d",
                  "(no carrier)  (1 delivered)", "1-day bins"):
        assert label in svg
    assert svg == charts.lead_time_distribution(lead_times(), "svg").decode()  # same data, same bytes


def every_chart() -> tuple[list, list]:
    """Each chart as a function of the format: with rows, and without."""
    backlog = pl.DataFrame({"as_of_day": [dt.date(2025, 12, 1), dt.date(2025, 12, 1), dt.date(2025, 12, 4)],
                            "age_bucket": ["0-2", "31+", "3-7"], "open_lines": [5, 2, 7]})
    suppliers = pl.DataFrame({"supplier": ["ping", None], "p90_lead_time_days": [9.5, None],
                              "cancellation_rate": [0.05, 0.0]})
    labels = list(AGE_BUCKET_LABELS)
    drawn = [lambda fmt: charts.lead_time_distribution(lead_times(), fmt),
             lambda fmt: charts.backlog_over_time(backlog, labels, fmt),
             lambda fmt: charts.supplier_scorecard(suppliers, 7, fmt)]
    empty = [lambda fmt: charts.lead_time_distribution(lead_times().clear(), fmt),
             lambda fmt: charts.backlog_over_time(backlog.clear(), labels, fmt),
             lambda fmt: charts.supplier_scorecard(suppliers.clear(), 7, fmt)]
    return drawn, empty


def test_every_chart_renders_png_and_svg_even_without_rows():
    drawn, empty = every_chart()
    for chart in drawn + empty:
        assert chart("png").startswith(b"\x89PNG\r\n\x1a\n")
        assert re.search(rb"<svg[^>]*viewBox", chart("svg"))
    assert b"No delivered lines yet" in empty[0]("svg")
    assert b"target 7 d" in drawn[2]("svg") and b"(no supplier)" in drawn[2]("svg")


@pytest.mark.parametrize("lines_per_bin", [3, 250_000])
def test_the_lead_time_chart_keeps_every_label_inside_its_fixed_margins(monkeypatch, lines_per_bin):
    """It is not laid out by matplotlib (fixed margins): tick labels of 1 to 6 digits, titles and the x label must
    still be inside the picture, and no panel's title may run into the chart title or the panel above."""
    drawn = []
    monkeypatch.setattr(charts, "_render", lambda figure, fmt: drawn.append(figure) or b"")
    days = pl.DataFrame({"carrier": ["a-carrier-with-a-long-name", "ups"], "lead_time_days": [2.0, 30.0]})
    charts.lead_time_distribution(days.select(pl.all().repeat_by(lines_per_bin).explode()))
    (figure,) = drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    renderer = FigureCanvasAgg(figure).get_renderer()
    (title,) = [t.get_window_extent(renderer) for t in figure.findobj(Text)
                if t.get_text() == "Lead time by carrier, delivered lines"]
    boxes = [ax.get_tightbbox(renderer) for ax in figure.axes]  # ticks, labels, titles and p50/p90 labels
    inside = figure.bbox
    for box in [*boxes, title]:
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, box
    assert boxes[0].y1 < title.y0  # the first panel's title is below the chart's
    assert all(lower.y1 < upper.y0 for upper, lower in zip(boxes, boxes[1:]))  # panels do not overlap


def test_pngs_are_the_pixels_savefig_would_lay_out_itself(monkeypatch):
    """_render lays a PNG out once, before savefig, instead of savefig's layout pass inside a draw: same bytes."""
    monkeypatch.setattr(charts, "_message", charts._message.__wrapped__)  # drawn each time, not from the cache
    drawn, empty = every_chart()
    ours = [chart("png") for chart in drawn + empty]

    def savefig_alone(figure, fmt: str) -> bytes:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=100)
        return buffer.getvalue()

    monkeypatch.setattr(charts, "_render", savefig_alone)
    assert [chart("png") for chart in drawn + empty] == ours
