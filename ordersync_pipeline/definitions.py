"""`defs`: the assets, checks, jobs, schedule and resources of ordersync-pipeline — wiring only."""

import dagster as dg

from ordersync_pipeline.assets.order_statuses import order_status_checks, order_statuses
from ordersync_pipeline.resources import resources_from_env

defs = dg.Definitions(
    assets=[order_statuses],
    asset_checks=order_status_checks,
    resources=resources_from_env(),
)
