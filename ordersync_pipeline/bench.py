"""`ordersync bench`: ingest speed and memory against the simulator, every figure against baselines
measured in the same run on the same data. Prints figures; asserts nothing.

    ordersync bench --days 365 --orders-per-day 1000 --latency-ms 0 --repeat 3
    ordersync bench --days 90 --latency-ms 20

Measured, each the median of --repeat runs:
- raw-fetch limit: a bare httpx client that only downloads and parses every page, sequential and with
  8 days in flight; the faster one is the limit the pipeline is compared with;
- pipeline: `dagster asset materialize --select order_statuses --partition-range` as its own process
  (whole-process wall, Dagster's start-up included; peak RSS of that process);
- naive baseline: sequential paging and row-by-row `executemany` inserts, over --naive-days days;
- marts: each mart's SQL over a synthetic table of --mart-lines lines (and two history spells per line);
- the daily job: one partition with the default 14-day lookback and the open-line refresh.
"""

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import httpx

from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline.snapshots import DEFAULT_STORAGE_VERSION, default_working_path, publish, storage_config

RAW_THREADS = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ordersync bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--orders-per-day", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency the simulator adds per request")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-days", type=int, default=3, help="days the (slow) naive baseline loads")
    parser.add_argument("--mart-lines", type=int, default=10_000_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["naive", "marts", "daily"], help="parts to leave out")
    args = parser.parse_args(argv)

    today = dt.datetime.now(dt.timezone.utc).date()
    first, last = today - dt.timedelta(days=args.days), today - dt.timedelta(days=1)
    with simulator_process(args) as base_url, tempfile.TemporaryDirectory() as workdir:
        print(f"simulator {base_url}: {args.days} days x {args.orders_per_day} orders/day, "
              f"{args.latency_ms:g} ms latency; warming up (generating every day once)...", flush=True)
        lines = raw_fetch(base_url, first, last, threads=RAW_THREADS)[1]
        rows: list[tuple[str, float, int, float | None]] = []  # (what, wall s, lines, peak RSS MB)

        for threads, label in ((1, "raw fetch, sequential"), (RAW_THREADS, f"raw fetch, {RAW_THREADS} days in flight")):
            walls = [raw_fetch(base_url, first, last, threads)[0] for _ in range(args.repeat)]
            rows.append((label, statistics.median(walls), lines, None))
        limit = min(rows[0][1], rows[1][1])

        runs = [pipeline_run(base_url, first, last, Path(workdir) / f"p{i}.duckdb") for i in range(args.repeat)]
        rows.append(("pipeline (one Dagster run, whole process)", statistics.median(r[0] for r in runs), lines,
                     max(r[1] for r in runs)))

        if "naive" not in args.skip:
            naive_last = first + dt.timedelta(days=min(args.naive_days, args.days) - 1)
            wall, naive_lines = naive_baseline(base_url, first, naive_last, Path(workdir) / "naive.duckdb")
            rows.append((f"naive baseline ({naive_lines} lines, scaled to the range)", wall * lines / naive_lines,
                         lines, None))

        print(f"\n{'measure':<50} {'wall s':>9} {'lines/s':>10} {'x raw limit':>12} {'peak RSS MB':>12}")
        for what, wall, count, rss in rows:
            rss_text = f"{rss:,.0f}" if rss else "-"
            print(f"{what:<50} {wall:>9.2f} {count / wall:>10,.0f} {wall / limit:>12.2f} {rss_text:>12}")
        if "naive" not in args.skip:
            print(f"pipeline is {rows[3][1] / rows[2][1]:.1f}x faster than the naive baseline")

        if "daily" not in args.skip:
            requests, wall = daily_job(base_url, last, Path(workdir) / "p0.duckdb")
            print(f"\ndaily_order_sync for {last} (14-day lookback + open-line refresh): {requests} API requests, "
                  f"{wall:.2f} s whole process")
        print()
        publish_benchmark(default_working_path(str(Path(workdir) / "p0.duckdb")), args.repeat)
    if "marts" not in args.skip:
        print()
        mart_benchmark(args.mart_lines, args.repeat)
    return 0


class simulator_process:
    """`ordersync simulator` in its own process, so it does not share the benchmark's CPU time (GIL)."""

    def __init__(self, args: argparse.Namespace):
        self.command = [sys.executable, "-m", "ordersync_pipeline.cli", "simulator", "--port", "0",
                        "--orders-per-day", str(args.orders_per_day), "--days", str(args.days + 1),
                        "--latency-ms", str(args.latency_ms)]

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        first_line = self.process.stdout.readline()
        if " on http" not in first_line:
            self.__exit__()
            raise SystemExit(f"the simulator did not start: {first_line!r}")
        return first_line.split(" on ", 1)[1].strip()

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _read_day(http: httpx.Client, day: dt.date) -> list[dict]:
    records, page = [], 1
    while True:
        response = http.get("/api/v1/orders/by-date", params={"start_date": str(day), "page": page, "limit": 100})
        body = response.json()
        records.extend(body["data"])
        if not body["meta"]["has_more"]:
            return records
        page += 1


def raw_fetch(base_url: str, first: dt.date, last: dt.date, threads: int) -> tuple[float, int]:
    """Download and parse every page, nothing else: the speed limit the API and this machine set."""
    started = time.monotonic()
    with httpx.Client(base_url=base_url, headers={"X-API-Key": SIMULATOR_API_KEY}, timeout=60,
                      limits=httpx.Limits(max_connections=threads + 2)) as http:
        if threads == 1:
            counts = [len(_read_day(http, day)) for day in _days(first, last)]
        else:
            with ThreadPoolExecutor(threads) as pool:
                counts = [len(r) for r in pool.map(lambda d: _read_day(http, d), _days(first, last))]
    return time.monotonic() - started, sum(counts)


def pipeline_run(base_url: str, first: dt.date, last: dt.date, database: Path) -> tuple[float, float]:
    """The README's range command as its own process: (wall seconds, peak RSS MB)."""
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": base_url,
           "ORDERSYNC_DUCKDB_PATH": str(database), "ORDERSYNC_START_DATE": str(min(first, dt.date(2025, 1, 1)))}
    env.pop("DAGSTER_HOME", None)
    log = database.with_suffix(".log")
    with log.open("w") as output:  # a file, not a pipe: a full pipe would stall the run
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "ordersync_pipeline.definitions",
             "--select", "order_statuses", "--partition-range", f"{first}...{last}"],
            env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # rusage of this process alone: its peak RSS
        wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"pipeline run failed:\n{log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def naive_baseline(base_url: str, first: dt.date, last: dt.date, database: Path) -> tuple[float, int]:
    """What a first attempt looks like: sequential pages, Python parsing, one INSERT per row."""
    started = time.monotonic()
    conn = duckdb.connect(str(database))
    conn.execute("CREATE TABLE order_statuses (order_status_id VARCHAR, order_id VARCHAR, order_date TIMESTAMPTZ, "
                 "status VARCHAR, supplier VARCHAR, carrier VARCHAR, delivery_date TIMESTAMPTZ, po_number VARCHAR)")
    count = 0
    with httpx.Client(base_url=base_url, headers={"X-API-Key": SIMULATOR_API_KEY}, timeout=60) as http:
        for day in _days(first, last):
            rows = [(r["order_status_id"], r["order_id"], dt.datetime.fromisoformat(r["order_date"]), r["status"],
                     r["supplier"], r["carrier"],
                     dt.datetime.fromisoformat(r["delivery_date"]) if r["delivery_date"] else None, r["po_number"])
                    for r in _read_day(http, day)]
            conn.execute("DELETE FROM order_statuses WHERE CAST(order_date AS DATE) = ?", [day])
            conn.executemany("INSERT INTO order_statuses VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            count += len(rows)
    conn.close()
    return time.monotonic() - started, count


def daily_job(base_url: str, day: dt.date, database: Path) -> tuple[int, float]:
    """daily_order_sync for one partition on the loaded database: (API requests, wall seconds)."""
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": base_url,
           "ORDERSYNC_DUCKDB_PATH": str(database), "ORDERSYNC_START_DATE": "2025-01-01"}
    env.pop("DAGSTER_HOME", None)
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "ordersync_pipeline.definitions", "-j",
         "daily_order_sync", "--tags", json.dumps({"dagster/partition": str(day)})],
        env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"daily job failed:\n{completed.stderr[-3000:]}")
    with duckdb.connect(str(database), read_only=True) as conn:
        loads = conn.execute("SELECT sum(pages_fetched) FROM order_status_loads WHERE order_day = ?", [day]).fetchall()
        refresh = conn.execute("SELECT api_requests FROM order_status_refreshes ORDER BY refreshed_at DESC LIMIT 1"
                               ).fetchall()
    return int(loads[0][0] or 0) + int(refresh[0][0]), wall


def mart_benchmark(lines: int, repeat: int) -> None:
    """Each mart's SQL over a synthetic order_statuses of `lines` lines and its history (a temporary DuckDB file)."""
    from ordersync_pipeline.assets import backlog, marts, scorecards
    from ordersync_pipeline.warehouse import ensure_schema

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
                      ("stuck_lines", [(backlog.STUCK_LINES_SQL, {"as_of": as_of, "stuck_after_days": 5})]),
                      ("supplier_scorecard", [(scorecards.SUPPLIER_SCORECARD_SQL, {"target_days": 7})]),
                      ("carrier_scorecard", [(scorecards.CARRIER_SCORECARD_SQL, None)])]
        print(f"{'mart over ' + format(lines, ',') + ' lines':<40} {'median s':>9} {'rows':>12}")
        for name, steps in statements:
            walls = []
            for _ in range(repeat):
                started = time.monotonic()
                marts.rebuild(conn, steps, {})  # exactly what the asset runs
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
        snapshots = [publish(conn, published, DEFAULT_STORAGE_VERSION) for _ in range(repeat)]
    seconds = statistics.median(snapshot.seconds for snapshot in snapshots)
    size = snapshots[-1].size_bytes / 1e6
    print(f"publish {lines:,} lines ({size:,.0f} MB published, working file {os.path.getsize(working) / 1e6:,.0f} MB): "
          f"{seconds:.2f} s median = {seconds / lines * 1e6:.2f} s per million lines; extra disk while publishing: "
          f"{size:,.0f} MB (one copy); {'file copy' if snapshots[-1].copied_file else 'rewritten through DuckDB'}")


if __name__ == "__main__":
    sys.exit(main())
