"""Charts people would rather look at than tables: pure functions from a polars frame to PNG or SVG bytes.

Rendered with matplotlib, without a browser: the same function draws the PNG an asset attaches to its
materialization (the Dagster UI shows it) and the SVG inlined in `ordersync report`'s HTML file. Knows no
Dagster and no DuckDB; the callers run the queries.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Format = Literal["png", "svg"]

# Equal-width bins, as few as one day wide, at most this many: wider bins would look like peaks.
MAX_BINS = 40
BAR = "#4C78A8"
P50, P90 = "#2CA02C", "#D62728"
# Light to dark: older backlog is the darker part of each bar.
AGE_COLOURS = ("#C6DBEF", "#9ECAE1", "#6BAED6", "#3182BD", "#08519C")


def lead_time_bin_edges(longest_days: float) -> list[int]:
    """Equal-width bins from 0 past the longest lead time: 1 day wide, or wider (whole days) so that they
    number at most MAX_BINS."""
    width = math.floor(longest_days / MAX_BINS) + 1
    return list(range(0, width * (math.floor(longest_days / width) + 2), width))


def lead_time_distribution(lead_times: pl.DataFrame, fmt: Format = "png") -> bytes:
    """Histogram of lead_time_days per carrier (one panel each, same equal-width bins and x axis), with the
    median (p50) and 90th percentile (p90) marked. `lead_times` has columns carrier and lead_time_days."""
    lead_times = lead_times.drop_nulls("lead_time_days").with_columns(pl.col("carrier").fill_null("(no carrier)"))
    if lead_times.is_empty():
        return _message("No delivered lines yet: no lead times to show.", fmt)
    carriers = sorted(lead_times["carrier"].unique().to_list())
    edges = lead_time_bin_edges(float(lead_times["lead_time_days"].max()))
    width, height = 7.5, 1.0 + 1.45 * len(carriers)
    figure = _figure(width, height, layout=None)
    # Fixed margins (inches) instead of matplotlib's constrained layout, which the other charts keep: it took half
    # of this chart's ~0.3 s, and every daily run draws it. They are what that layout gave this chart, with room
    # on the left for 6-digit counts: nothing else in a panel's frame changes with the data.
    figure.subplots_adjust(left=0.72 / width, right=1 - 0.11 / width, bottom=0.45 / height, top=1 - 0.5 / height,
                           hspace=0.285)
    axes = figure.subplots(len(carriers), 1, sharex=True, squeeze=False)[:, 0]
    for ax, carrier in zip(axes, carriers):
        days = lead_times.filter(pl.col("carrier") == carrier)["lead_time_days"]
        # One filled outline and one set of white separators per panel: ax.hist draws a patch per bin, which
        # made this chart ~25% slower to render, and every daily run renders it.
        counts, _ = np.histogram(days.to_numpy(), bins=edges)
        ax.stairs(counts, edges, fill=True, color=BAR)
        ax.vlines(edges[1:-1], 0, np.minimum(counts[:-1], counts[1:]), colors="white", linewidth=0.5)
        for q, colour in ((0.5, P50), (0.9, P90)):
            value = float(days.quantile(q, "linear"))  # as DuckDB's quantile_cont
            ax.axvline(value, color=colour, linewidth=1.6, linestyle="--")
            # Left of its line in the last fifth of the axis: the margins are fixed, nothing makes room past the edge.
            _label_line(ax, value, f"p{round(q * 100)} {value:.1f} d", colour, left=value > 0.8 * edges[-1])
        ax.set_ylabel("lines", fontsize=8)
        ax.set_title(f"{carrier}  ({days.len():,} delivered)", fontsize=9, loc="left")
        _tidy(ax)
    axes[-1].set_xlabel(f"days from order to delivery ({edges[1]}-day bins)")
    axes[-1].set_xlim(0, edges[-1])
    figure.suptitle("Lead time by carrier, delivered lines", x=0.01, y=1 - 0.04 / height, ha="left", va="top",
                    fontsize=11)
    return _render(figure, fmt)


def backlog_over_time(backlog: pl.DataFrame, age_buckets: Sequence[str], fmt: Format = "png") -> bytes:
    """Open lines per day, stacked by age bucket (youngest at the bottom). Days without rows were not
    observed and stay blank: unknown, not zero. `backlog` has as_of_day, age_bucket and open_lines."""
    if backlog.is_empty():
        return _message("No backlog day observed yet: the 06:00 run writes one per day.", fmt)
    totals = backlog.group_by("as_of_day", "age_bucket").agg(pl.col("open_lines").sum())
    days = pl.date_range(totals["as_of_day"].min(), totals["as_of_day"].max(), eager=True).alias("as_of_day")
    from matplotlib.dates import ConciseDateFormatter, DayLocator

    figure = _figure(width=7.5, height=3.6)
    ax = figure.subplots()
    bottom = [0] * days.len()
    for bucket, colour in zip(age_buckets, AGE_COLOURS):
        lines = (days.to_frame().join(totals.filter(pl.col("age_bucket") == bucket), on="as_of_day", how="left")
                 .sort("as_of_day")["open_lines"].fill_null(0).to_list())
        ax.bar(days.to_list(), lines, bottom=bottom, width=0.85, color=colour, label=f"{bucket} days old")
        bottom = [b + n for b, n in zip(bottom, lines)]
    ax.set_ylabel("open lines")
    ax.set_xlim(days.min() - dt.timedelta(days=1), days.max() + dt.timedelta(days=1))
    locator = DayLocator(interval=max(1, days.len() // 8))  # whole days: the figures are per day
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.legend(fontsize=8, frameon=False, ncols=len(age_buckets), loc="upper left", bbox_to_anchor=(0, 1.12))
    ax.set_title("Open backlog by day (blank days: not observed)", fontsize=11, loc="left", pad=24)
    _tidy(ax)
    return _render(figure, fmt)


def supplier_scorecard(suppliers: pl.DataFrame, target_days: int | None = None, fmt: Format = "png") -> bytes:
    """Two bar panels per supplier, worst p90 first: 90th-percentile lead time (days, with the delivery
    target marked) and cancellation rate. `suppliers` has supplier, p90_lead_time_days, cancellation_rate."""
    if suppliers.is_empty():
        return _message("No supplier has ordered lines yet.", fmt)
    ordered = suppliers.with_columns(pl.col("supplier").fill_null("(no supplier)")).sort(
        "p90_lead_time_days", descending=False, nulls_last=False)
    names = ordered["supplier"].to_list()
    figure = _figure(width=7.5, height=1.2 + 0.32 * len(names))
    lead, cancelled = figure.subplots(1, 2, sharey=True)
    p90 = ordered["p90_lead_time_days"].fill_null(0).to_list()
    lead.barh(names, p90, color=BAR)
    if target_days:
        lead.axvline(target_days, color=P90, linestyle="--", linewidth=1.2)
        _label_line(lead, target_days, f"target {target_days} d", P90, above=True)
    lead.set_title("p90 lead time (days)", fontsize=9, loc="left")
    rates = [100 * r for r in ordered["cancellation_rate"].fill_null(0).to_list()]
    cancelled.barh(names, rates, color="#E45756")
    cancelled.set_title("cancelled (% of lines ordered)", fontsize=9, loc="left")
    for ax, values, fmt_value in ((lead, p90, "{:.1f}"), (cancelled, rates, "{:.1f}%")):
        for y, value in enumerate(values):
            ax.annotate(fmt_value.format(value), (value, y), xytext=(2, 0), textcoords="offset points",
                        va="center", fontsize=7)
        ax.margins(x=0.15)
        ax.tick_params(axis="y", labelsize=8)
        _tidy(ax)
    figure.suptitle("Suppliers, slowest first: lines ordered in the last 4 weeks", x=0.01, ha="left", fontsize=11)
    return _render(figure, fmt)


def _figure(width: float, height: float, layout: Literal["constrained"] | None = "constrained") -> Figure:
    # Imported on the first chart, not when Dagster loads the code location (every run and command does).
    from matplotlib.figure import Figure

    # dpi=100 as in _render's savefig: the layout _render runs before savefig is computed at the figure's DPI.
    return Figure(figsize=(width, height), dpi=100, layout=layout)


def _label_line(ax: Axes, x: float, text: str, colour: str, above: bool = False, left: bool = False) -> None:
    """A label at the top of a vertical marker line (right of it, or `left`), on white so the bars behind it do
    not hide it."""
    ax.annotate(text, (x, 1), xycoords=("data", "axes fraction"), xytext=(-3 if left else 3, 2 if above else -2),
                textcoords="offset points", ha="right" if left else "left", va="bottom" if above else "top",
                fontsize=8, color=colour,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})


def _tidy(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)


@functools.cache  # three texts, two formats: the same bytes every time, and a process's runs often draw one again
def _message(text: str, fmt: Format) -> bytes:
    figure = _figure(width=7.5, height=1.0)
    figure.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555555")
    return _render(figure, fmt)


def _render(figure: Figure, fmt: Format) -> bytes:
    import matplotlib

    buffer = io.BytesIO()
    # SVG: text stays text (smaller, selectable) and ids are stable, so the same data gives the same bytes.
    # No automatic layout from rc settings: set_layout_engine(None) below must mean none.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ordersync", "figure.autolayout": False,
                                "figure.constrained_layout.use": False}):
        if fmt == "png":
            # The constrained layout, run once here: left to savefig, it runs inside a whole draw with rendering
            # disabled, then draws again for real. Same pixels, ~9 % less CPU; every daily run draws three PNGs.
            # (SVG is laid out at 72 dpi by its own renderer: left to savefig, as it is drawn only for reports.)
            # As Figure.draw does: nothing to lay out in a message (no axes) or the lead-time chart (fixed margins).
            if figure.axes and figure.get_layout_engine():
                try:
                    figure.get_layout_engine().execute(figure)
                except ValueError:  # Figure.draw goes on without the layout then, and so does savefig
                    pass
            figure.set_layout_engine(None)  # not "none": its placeholder engine still costs savefig that extra draw
        figure.savefig(buffer, format=fmt, dpi=100, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()
