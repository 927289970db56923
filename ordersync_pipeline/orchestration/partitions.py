"""The daily partitions every asset shares: one UTC day of order_date each, from ORDERSYNC_START_DATE.

Read when this module is imported (Dagster needs the definition as the assets are declared); a retailer's
own copy of the same days is made in retailer_scope.py.
"""


import datetime as dt

import dagster as dg

from ordersync_pipeline.settings import Settings

daily_partitions = dg.DailyPartitionsDefinition(start_date=Settings.from_env().start_date,
                                                timezone="UTC")


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The UTC days of this run: one for a single partition, many for a single-run range backfill."""
    window = context.partition_time_window
    first, end = window.start.date(), window.end.date()  # end is exclusive
    return [first + dt.timedelta(days=i) for i in range((end - first).days)]
