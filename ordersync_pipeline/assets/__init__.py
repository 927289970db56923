"""The assets. Imported before any of them is defined, so the filter below is in place when they are."""

import warnings

from dagster import BetaWarning

# `backfill_policy=BackfillPolicy.single_run()` (every partitioned asset: a backfill of days is one run that
# loads them together) is beta in Dagster 1.13 and has no non-beta equivalent. Its warning fires once per
# asset each time a process loads the code location, opening every demo and every run log; only that
# warning is silenced.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset` is currently in beta",
                        category=BetaWarning)
