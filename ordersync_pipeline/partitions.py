"""The daily partitions every asset shares: one UTC day of order_date each."""


import datetime as dt

import dagster as dg

from ordersync_pipeline.resources import date_from_env

DEFAULT_START_DATE = "2025-01-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=date_from_env("ORDERSYNC_START_DATE", DEFAULT_START_DATE),
                                                timezone="UTC")


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The UTC days of this run: one for a single partition, many for a single-run range backfill."""
    window = context.partition_time_window
    first, end = window.start.date(), window.end.date()  # end is exclusive
    return [first + dt.timedelta(days=i) for i in range((end - first).days)]
