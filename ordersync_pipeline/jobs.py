"""What runs every morning: `daily_order_sync` for yesterday (UTC), and its schedule."""

import dagster as dg

from ordersync_pipeline.assets.backlog import open_order_backlog, stuck_lines
from ordersync_pipeline.assets.marts import delivery_lead_times, open_orders
from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.assets.refresh import order_status_refresh
from ordersync_pipeline.assets.scorecards import carrier_scorecard, supplier_scorecard
from ordersync_pipeline.partitions import daily_partitions

daily_order_sync = dg.define_asset_job(
    "daily_order_sync",
    selection=dg.AssetSelection.assets(order_statuses, order_status_refresh, delivery_lead_times, open_orders,
                                       open_order_backlog, stuck_lines, supplier_scorecard, carrier_scorecard),
    partitions_def=daily_partitions,
    description="Load day D, re-read the lookback window and every older open line, rebuild the marts.",
)

# Each tick (06:00 UTC) runs the partition of the day that just ended.
daily_order_sync_schedule = dg.build_schedule_from_partitioned_job(
    daily_order_sync, hour_of_day=6, minute_of_hour=0, default_status=dg.DefaultScheduleStatus.RUNNING
)
