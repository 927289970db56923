"""The daily partitions every asset shares: one UTC day of order_date each."""


import datetime as dt
import os

import dagster as dg

DEFAULT_START_DATE = "2025-01-01"


def start_date_from_env() -> str:
    value = os.environ.get("ORDERSYNC_START_DATE", DEFAULT_START_DATE)
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"ORDERSYNC_START_DATE must be a date in YYYY-MM-DD form, got {value!r}") from None
    return value


daily_partitions = dg.DailyPartitionsDefinition(start_date=start_date_from_env(), timezone="UTC")


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The UTC days of this run: one for a single partition, many for a single-run range backfill."""
    window = context.partition_time_window
    first, end = window.start.date(), window.end.date()  # end is exclusive
    return [first + dt.timedelta(days=i) for i in range((end - first).days)]
