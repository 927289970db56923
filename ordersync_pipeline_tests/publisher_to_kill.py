"""A process that writes the next version into the working file and publishes it, stopping at a chosen
point of publishing (it prints the point, then waits) for test_analyst_database to kill it with SIGKILL there.

Points: before-copy, mid-copy (half the bytes copied), before-rename (the copy complete, its row written),
after-rename; `none` publishes to the end.
"""

import datetime as dt
import os
import sys
import time

import duckdb

from ordersync_pipeline.storage import snapshots
from ordersync_pipeline.storage.snapshots import DEFAULT_STORAGE_VERSION, publish, storage_config
from ordersync_pipeline.storage.schema import ensure_schema

ROWS = 300_000
POINTS = ("before-copy", "mid-copy", "before-rename", "after-rename", "none")


def stop_here(point: str) -> None:
    print(point, flush=True)
    time.sleep(120)  # bounded: the test kills the process long before
    raise SystemExit(f"not killed at {point}")


def install_stop(point: str) -> None:
    replace = os.replace  # the real one, for the point after the rename

    def half_copy(source: str, target: str) -> None:
        with open(source, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read(os.path.getsize(source) // 2))
            dst.flush()
            os.fsync(dst.fileno())
        stop_here(point)

    if point == "before-copy":
        snapshots.shutil.copyfile = lambda source, target: stop_here(point)
    elif point == "mid-copy":
        snapshots.shutil.copyfile = half_copy
    elif point == "before-rename":
        snapshots.os.replace = lambda source, target: stop_here(point)
    elif point == "after-rename":
        snapshots.os.replace = lambda source, target: (replace(source, target), stop_here(point))


def main(working: str, published: str, point: str) -> None:
    assert point in POINTS, point
    conn = duckdb.connect(working, config=storage_config(DEFAULT_STORAGE_VERSION))
    ensure_schema(conn)
    version = conn.execute("CREATE TABLE IF NOT EXISTS version (v INTEGER); "
                           "SELECT coalesce(max(v), 0) FROM version").fetchall()[0][0] + 1
    # Every table of one version carries the version number: a mix of two versions is detectable.
    conn.execute(f"CREATE OR REPLACE TABLE lines AS SELECT range AS id, {version} AS v FROM range({ROWS})")
    conn.execute(f"CREATE OR REPLACE TABLE version AS SELECT {version} AS v")
    install_stop(point)
    publish(conn, published, DEFAULT_STORAGE_VERSION, run_id=f"version-{version}", as_of=dt.date(2025, 12, 1))
    print("published", version, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
