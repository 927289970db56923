"""`ordersync bench`'s figures for single steps, each timed alone on synthetic data: the marts' rebuild SQL,
publishing the analysts' file, and uploading it to object storage (moto's S3 server on 127.0.0.1).
Prints figures; asserts nothing. runner.py calls these after the ingest figures.
"""

import datetime as dt
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from ordersync_pipeline.storage.snapshots import DEFAULT_STORAGE_VERSION, publish, storage_config


def mart_benchmark(lines: int, repeat: int) -> None:
    """Each mart's SQL over a synthetic order_statuses of `lines` lines and its history (a temporary DuckDB file)."""
    from ordersync_pipeline.assets import backlog, marts, scorecards
    from ordersync_pipeline.storage.schema import ensure_schema

    with tempfile.TemporaryDirectory() as workdir:
        # In the storage format the pipeline's working files use, so publishing is measured as it runs.
        conn = duckdb.connect(str(Path(workdir) / "marts.duckdb"), config=storage_config(DEFAULT_STORAGE_VERSION))
        conn.execute("SET enable_progress_bar = false")
        ensure_schema(conn)
        started = time.monotonic()
        conn.execute(f"""
            INSERT INTO order_statuses (order_id, order_status_id, supplier_order_id, order_date, po_number, item,
                supplier, status, carrier, delivery_date, order_day, fetched_at)
            SELECT 'o' || (i // 3), 'l' || i, 's' || (i // 3), d, 'PO' || (i // 5), 'item ' || (i % 50),
                   'supplier ' || (i % 12), s, 'carrier ' || (i % 5),
                   CASE WHEN s = 'delivered' THEN d + to_microseconds(CAST(86400e6 * (1 + random() * 9) AS BIGINT)) END,
                   CAST(d AS DATE), now()
            FROM (SELECT i, TIMESTAMPTZ '2023-01-01 00:00:00+00' + to_microseconds(CAST(i * 9e6 AS BIGINT)) AS d,
                         ['delivered', 'delivered', 'delivered', 'in_transit', 'processing', 'cancelled',
                          'backordered', 'shipped'][1 + CAST(hash(i) % 8 AS BIGINT)] AS s
                  FROM range({lines}) AS t(i))
        """)
        print(f"synthetic order_statuses: {lines:,} lines built in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        # Up to two observed spells per line, first seen at 06:00 the day after its order: processing (1 in 8
        # backordered), then its current status two days later; open lines are seen daily until the last run.
        conn.execute("""
            INSERT INTO order_status_history
            WITH spells AS (
                SELECT order_status_id, order_day, status,
                       CASE WHEN hash(order_status_id) % 8 = 0 THEN 'backordered' ELSE 'processing' END AS first_status,
                       timezone('UTC', CAST(order_day + 1 AS TIMESTAMP)) + INTERVAL 6 HOUR AS seen,
                       timezone('UTC', CAST(last_day + 1 AS TIMESTAMP)) + INTERVAL 6 HOUR AS last_run
                FROM order_statuses, (SELECT max(order_day) AS last_day FROM order_statuses)
            )
            SELECT order_status_id, order_day, first_status, seen,
                   CASE WHEN status = first_status THEN last_run ELSE seen + INTERVAL 1 DAY END, status = first_status
            FROM spells
            UNION ALL
            SELECT order_status_id, order_day, status, seen + INTERVAL 2 DAY,
                   CASE WHEN status IN ('delivered', 'cancelled') THEN seen + INTERVAL 3 DAY ELSE last_run END, true
            FROM spells WHERE status <> first_status
        """)
        print(f"synthetic order_status_history: {conn.execute('SELECT count(*) FROM order_status_history').fetchall()[0][0]:,} "
              f"spells built in {time.monotonic() - started:.1f} s")
        as_of = conn.execute("SELECT max(order_day) FROM order_statuses").fetchall()[0][0]
        observed_at = conn.execute("SELECT max(last_seen_at) FROM order_status_history").fetchall()[0][0]
        backlog_day = backlog.day_observed_on_time(observed_at)
        statements = [("delivery_lead_times", [(marts.DELIVERY_LEAD_TIMES_SQL, None)]),
                      ("delivery_lead_time_summary", [(marts.DELIVERY_LEAD_TIME_SUMMARY_SQL, None)]),
                      ("open_orders", [(marts.OPEN_ORDERS_SQL, {"as_of": as_of})]),
                      ("open_order_summary", [(marts.OPEN_ORDER_SUMMARY_SQL, None)]),
                      ("open_order_backlog", [
                          (backlog.OPEN_ORDER_BACKLOG_TABLE_SQL, None),
                          ("DELETE FROM open_order_backlog WHERE as_of_day = $as_of", {"as_of": backlog_day}),
                          (backlog.OPEN_ORDER_BACKLOG_DAY_SQL, {"as_of": backlog_day, "observed_at": observed_at})]),
                      ("stuck_lines", [(backlog.STUCK_LINES_SQL, {"as_of": as_of, "stuck_after_days": 5,
                                                                  "observed_at": observed_at})]),
                      ("supplier_scorecard", [(scorecards.SUPPLIER_SCORECARD_SQL, {"target_days": 7})]),
                      ("carrier_scorecard", [(scorecards.CARRIER_SCORECARD_SQL, None)])]
        # The rebuild SQL only (what dominates at scale): not the asset's chart frames, metadata and comments.
        print(f"{'mart SQL over ' + format(lines, ',') + ' lines':<40} {'median s':>9} {'rows':>12}")
        for name, steps in statements:
            walls = []
            for _ in range(repeat):
                started = time.monotonic()
                marts.rebuild(conn, steps, {})  # the asset's SQL, in the asset's transaction
                walls.append(time.monotonic() - started)
            count = conn.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
            print(f"{name:<40} {statistics.median(walls):>9.2f} {count:>12,}")
        conn.close()
        print()
        publish_benchmark(str(Path(workdir) / "marts.duckdb"), repeat)


def publish_benchmark(working: str, repeat: int) -> None:
    """What analyst_database adds to a run: snapshots.publish of `working` (the asset's own call), timed."""
    with tempfile.TemporaryDirectory() as folder, duckdb.connect(working) as conn:
        lines = conn.execute("SELECT count(*) FROM order_statuses").fetchall()[0][0]
        published = str(Path(folder) / "ordersync.duckdb")
        snapshots = [publish(conn, published, DEFAULT_STORAGE_VERSION, run_id="bench", as_of=dt.date.today())
                     for _ in range(repeat)]
        seconds = statistics.median(snapshot.seconds for snapshot in snapshots)
        size = snapshots[-1].size_bytes / 1e6
        print(f"publish {lines:,} lines ({size:,.0f} MB published, working file {os.path.getsize(working) / 1e6:,.0f} "
              f"MB): {seconds:.2f} s median = {seconds / lines * 1e6:.2f} s per million lines; extra disk while "
              f"publishing: {size:,.0f} MB (one copy); "
              f"{'file copy' if snapshots[-1].copied_file else 'rewritten through DuckDB'}")
        upload_benchmark(published, lines, repeat)


def upload_benchmark(published: str, lines: int, repeat: int) -> None:
    """object_storage.upload_snapshot of the published file (upload a version + server-side copy + retention)
    to moto's S3 server on loopback, timed; the AWS_* variables are set for the call and restored after."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("publish to object storage: skipped (needs moto[server], in the dev extra)")
        return
    from ordersync_pipeline.storage.object_storage import upload_snapshot

    # moto serves through werkzeug, which logs every request on stderr even with verbose=False.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(Bucket="bench")
        moment = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        uploads = [upload_snapshot(published, "s3://bench/ordersync.duckdb", moment + dt.timedelta(seconds=n), keep=2)
                   for n in range(repeat)]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
    seconds = statistics.median(u.seconds for u in uploads)
    print(f"publish to object storage (moto S3 on loopback; upload + server-side copy + retention), "
          f"{uploads[-1].size_bytes / 1e6:,.0f} MB: {seconds:.2f} s median = {seconds / lines * 1e6:.2f} s per million "
          "lines, on top of the local publish")

