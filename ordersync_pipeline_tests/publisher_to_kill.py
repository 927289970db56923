"""A process that writes a new version into the working file and publishes it, over and over, for
test_analyst_database to kill with SIGKILL at random moments of publishing."""

import sys

import duckdb

from ordersync_pipeline.snapshots import DEFAULT_STORAGE_VERSION, publish, storage_config

ROWS = 300_000  # big enough that copying takes a noticeable share of each cycle


def main(working: str, published: str) -> None:
    conn = duckdb.connect(working, config=storage_config(DEFAULT_STORAGE_VERSION))
    version = conn.execute("CREATE TABLE IF NOT EXISTS version (v INTEGER); "
                           "SELECT coalesce(max(v), 0) FROM version").fetchall()[0][0]
    for _ in range(10_000):  # bounded; the test kills it long before
        version += 1
        # Every table of one version carries the version number: a mix of two versions is detectable.
        conn.execute(f"CREATE OR REPLACE TABLE lines AS SELECT range AS id, {version} AS v FROM range({ROWS})")
        conn.execute(f"CREATE OR REPLACE TABLE version AS SELECT {version} AS v")
        publish(conn, published, DEFAULT_STORAGE_VERSION)
        print(version, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
