"""`ordersync bench`: ingest speed and memory against the simulator, every figure against baselines
measured in the same run on the same data. Prints figures; asserts nothing.

    ordersync bench --days 365 --orders-per-day 1000 --latency-ms 0 --repeat 3 --pre-encoded
    ordersync bench --days 90 --latency-ms 20
    ordersync bench --days 90 --rss-days 90 365 730 --repeat 1 --skip naive marts daily dlt

Measured, each the median of --repeat runs:
- raw-fetch limit: a bare httpx client that only downloads and parses every page (msgspec, to Python
  objects), sequential and with 8 days in flight; the faster one is the limit the pipeline is compared
  with; its CPU per line is the client's own cost;
- pipeline: `dagster asset materialize --select order_statuses --partition-range` as its own process
  (whole-process wall, Dagster's start-up included; peak RSS of that process; CPU per stored line =
  user+sys CPU minus that of a one-day run, divided by the lines);
- fixed cost: the same command for one day (wall, CPU, peak RSS);
- peak RSS by range (--rss-days): the pipeline over each range, to show memory does not grow with it;
- dlt: the best-tuned dlt `rest_api` pipeline on the same data (bench_dlt.py; needs the `bench` extra);
- naive baseline: sequential paging and row-by-row `executemany` inserts, over --naive-days days;
- marts: each mart's rebuild SQL (not its chart, metadata or comments) over a synthetic table of --mart-lines
  lines (and two history spells per line);
- the daily job: one partition with the default 14-day lookback and the open-line refresh;
- publishing: the local publish, and beside it the upload to object storage (ORDERSYNC_PUBLISH_URL) against
  moto's S3 server on 127.0.0.1 (needs the `dev` extra's moto; skipped without it). Loopback has no
  network latency or bandwidth limit: this is the client's and the store's own cost, a floor.

--pre-encoded makes the simulator serve every by-date page from bytes encoded once (its clock frozen), so
the server is not the bottleneck and the raw-fetch limit reflects the client alone.
"""

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import msgspec

from ordersync_pipeline.bench.steps import mart_benchmark, publish_benchmark
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY
from ordersync_pipeline.storage.snapshots import default_working_path

RAW_THREADS = 8
PARTS = ("naive", "marts", "daily", "dlt", "fixed")


@dataclass(frozen=True)
class Run:
    """One measured process (or in-process fetch): wall and CPU seconds, peak RSS in MB (None: not measured)."""

    wall: float
    cpu: float
    rss: float | None = None
    lines: int = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ordersync bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--orders-per-day", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency the simulator adds per request")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pre-encoded", action="store_true", help="the simulator serves pages encoded once")
    parser.add_argument("--rss-days", type=int, nargs="*", default=[],
                        help="also run the pipeline over each of these ranges (ending yesterday) for its peak RSS")
    parser.add_argument("--naive-days", type=int, default=3, help="days the (slow) naive baseline loads")
    parser.add_argument("--mart-lines", type=int, default=10_000_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--compare-with", metavar="CHECKOUT",
                        help="also run the pipeline (range and --rss-days) from another checkout of this project, "
                             "e.g. the main branch, for before/after figures measured in the same run")
    args = parser.parse_args(argv)

    today = dt.datetime.now(dt.timezone.utc).date()
    first, last = today - dt.timedelta(days=args.days), today - dt.timedelta(days=1)
    history_days = max([args.days, *args.rss_days])
    with simulator_process(args, history_days) as base_url, tempfile.TemporaryDirectory() as workdir:
        print(f"simulator {base_url}: {args.days} days x {args.orders_per_day} orders/day, {args.latency_ms:g} ms "
              f"latency{', pre-encoded pages' if args.pre_encoded else ''}; warming up (every day once)...", flush=True)
        raw_fetch(base_url, today - dt.timedelta(days=history_days), last, threads=RAW_THREADS)
        raw_labels = {1: "raw fetch, sequential", RAW_THREADS: f"raw fetch, {RAW_THREADS} days in flight"}
        fixed = None
        if "fixed" not in args.skip:
            fixed = pipeline_run(base_url, last, last, Path(workdir) / "one-day.duckdb")
        # In rounds, each measuring everything once, not each measure's repeats one after another: this machine's
        # speed drifts by up to ±20 % within minutes, so what is compared should be measured close in time.
        rounds: list[dict[str, Run]] = []
        for i in range(args.repeat):
            measured = {label: raw_fetch(base_url, first, last, threads) for threads, label in raw_labels.items()}
            measured[PIPELINE] = pipeline_run(base_url, first, last, Path(workdir) / f"p{i}.duckdb")
            measured[FLOOR] = pipeline_run(base_url, first, last, Path(workdir) / f"floor{i}.duckdb",
                                           module=FLOOR_MODULE)
            if args.compare_with:
                measured[BEFORE] = pipeline_run(base_url, first, last, Path(workdir) / f"b{i}.duckdb",
                                                args.compare_with)
            rounds.append(measured)
        rows: list[tuple[str, Run]] = []
        for label in rounds[0]:
            runs = [measured[label] for measured in rounds]
            rss = max((run.rss for run in runs if run.rss is not None), default=None)
            rows.append((label, median_run(runs, rss=rss)))
        measures = dict(rows)
        limit = min((measures[label] for label in raw_labels.values()), key=lambda run: run.wall)
        lines = limit.lines
        pipeline, floor = measures[PIPELINE], measures[FLOOR]
        if fixed is not None:
            rows.insert(len(raw_labels), ("fixed cost: pipeline for one day", fixed))
        if "dlt" not in args.skip:
            dlt = dlt_run(base_url, first, last, Path(workdir) / "dlt")
            if dlt is not None:
                rows.append(("dlt rest_api, best-tuned (one run, whole process)", dlt))
        if "naive" not in args.skip:
            naive_last = first + dt.timedelta(days=min(args.naive_days, args.days) - 1)
            wall, naive_lines = naive_baseline(base_url, first, naive_last, Path(workdir) / "naive.duckdb")
            scale = lines / naive_lines
            rows.append((f"naive baseline ({naive_lines} lines, scaled)", Run(wall * scale, float("nan"), None, lines)))

        print(f"\n{'measure':<52} {'wall s':>8} {'lines/s':>10} {'x raw limit':>12} {'CPU us/line':>12} "
              f"{'peak RSS MB':>12}")
        for what, run in rows:
            print(f"{what:<52} {run.wall:>8.2f} {_per_second(run):>10} {run.wall / limit.wall:>12.2f} "
                  f"{_cpu_per_line(run, fixed, what):>12} {f'{run.rss:,.0f}' if run.rss else '-':>12}")
        for name, label in (("dlt rest_api", "the best-tuned dlt"), ("naive baseline", "the naive baseline")):
            other = next((run for what, run in rows if what.startswith(name)), None)
            if other is not None:
                print(f"{label} took {other.wall / pipeline.wall:.2f}x the pipeline's time")
        if "fixed" not in args.skip:
            print(f"pipeline minus the one-day fixed cost: {(pipeline.wall - fixed.wall) / limit.wall:.2f}x the raw limit")
        own_wall, own_cpu = pipeline.wall - floor.wall, pipeline.cpu - floor.cpu
        print(f"own work = pipeline - Dagster's floor: {own_wall:.2f} s wall = {own_wall / limit.wall:.2f}x the raw limit; "
              f"own CPU {own_cpu / lines * 1e6:.1f} us per line ({lines:,} lines; load average "
              f"{os.getloadavg()[0]:.2f} at the end)")
        for number, measured in enumerate(rounds, 1):
            raw = min(measured[label].wall for label in raw_labels.values())
            own = measured[PIPELINE].wall - measured[FLOOR].wall
            before = f", before {measured[BEFORE].wall:.2f} s" if BEFORE in measured else ""
            print(f"round {number}: raw limit {raw:.2f} s, pipeline {measured[PIPELINE].wall:.2f} s, floor "
                  f"{measured[FLOOR].wall:.2f} s, own work {own / raw:.2f}x the raw limit{before}")

        if args.rss_days:
            print(f"\n{'pipeline over':<20} {'lines':>10} {'wall s':>8} {'x raw limit/line':>17} {'CPU us/line':>12} "
                  f"{'peak RSS MB':>12}")
            for days in args.rss_days:
                for label, checkout in (("", None), (" (before)", args.compare_with)):
                    if label and not checkout:
                        continue
                    run = pipeline_run(base_url, today - dt.timedelta(days=days), last,
                                       Path(workdir) / f"rss{days}{label.strip(' ()')}.duckdb", checkout)
                    print(f"{f'{days} days{label}':<20} {run.lines:>10,} {run.wall:>8.2f} "
                          f"{run.wall / (limit.wall * run.lines / lines):>17.2f} "
                          f"{_cpu_per_line(run, fixed, 'pipeline'):>12} {run.rss:>12,.0f}", flush=True)

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


def median_run(runs: list[Run], rss: float | None = None) -> Run:
    return Run(statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs), rss, runs[0].lines)


def _per_second(run: Run) -> str:
    return f"{run.lines / run.wall:,.0f}" if run.lines else "-"


def _cpu_per_line(run: Run, fixed: Run | None, what: str) -> str:
    """Raw fetches: CPU / lines. Pipeline runs: (CPU - the one-day run's CPU) / lines. Others: not measured."""
    if not run.lines or run.cpu != run.cpu or what.startswith("fixed"):
        return "-"
    if what.startswith("pipeline"):
        if fixed is None:
            return "-"
        return f"{(run.cpu - fixed.cpu) / run.lines * 1e6:.1f}"
    return f"{run.cpu / run.lines * 1e6:.1f}"


class simulator_process:
    """`ordersync simulator` in its own process, so it does not share the benchmark's CPU time (GIL)."""

    def __init__(self, args: argparse.Namespace, history_days: int):
        self.command = [sys.executable, "-m", "ordersync_pipeline.cli", "simulator", "--port", "0",
                        "--orders-per-day", str(args.orders_per_day), "--days", str(history_days + 1),
                        "--latency-ms", str(args.latency_ms), *(["--pre-encoded"] if args.pre_encoded else [])]

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
    by_date = f"{str(http.base_url).rstrip('/')}/api/v1/orders/by-date"
    while True:
        # A whole URL, as the pipeline's client sends: httpx merging a path and params costs a third of its CPU.
        response = http.get(f"{by_date}?start_date={day}&page={page}&limit=100")
        body = msgspec.json.decode(response.content)
        records.extend(body["data"])
        if not body["meta"]["has_more"]:
            return records
        page += 1


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_fetch(base_url: str, first: dt.date, last: dt.date, threads: int) -> Run:
    """Download and parse every page, nothing else: the speed limit the API and this machine set.

    One httpx client per thread: a client shared by 8 threads sometimes read from a connection another
    thread had just closed (EBADF) on a loaded machine.
    """
    started, cpu = time.monotonic(), _cpu_seconds()
    clients: list[httpx.Client] = []
    local = threading.local()

    def read_day(day: dt.date) -> int:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=base_url, headers={"X-API-Key": SIMULATOR_API_KEY}, timeout=120)
            clients.append(local.http)
        return len(_read_day(local.http, day))

    try:
        with ThreadPoolExecutor(threads) as pool:
            counts = list(pool.map(read_day, _days(first, last)))
    finally:
        for client in clients:
            client.close()
    return Run(time.monotonic() - started, _cpu_seconds() - cpu, None, sum(counts))


FLOOR_MODULE = "ordersync_pipeline.bench.floor"
PIPELINE = "pipeline (one Dagster run, whole process)"
FLOOR = "Dagster's floor (no-op asset, same run shape)"
BEFORE = "pipeline from --compare-with (before)"


def pipeline_run(base_url: str, first: dt.date, last: dt.date, database: Path, checkout: str | None = None,
                 module: str = "ordersync_pipeline.definitions") -> Run:
    """The README's range command as its own process (from `checkout` if given): wall, CPU, peak RSS, lines.
    With module=FLOOR_MODULE: the same command over a no-op asset (bench_floor.py), Dagster's floor."""
    env = {**os.environ, "ORDERSYNC_API_KEY": SIMULATOR_API_KEY, "ORDERSYNC_BASE_URL": base_url,
           "ORDERSYNC_DUCKDB_PATH": str(database), "ORDERSYNC_START_DATE": str(min(first, dt.date(2025, 1, 1)))}
    env.pop("DAGSTER_HOME", None)
    # `python -m` puts its working directory first on sys.path, ahead of PYTHONPATH: run in the checkout under
    # test, or in the run's own folder so that a checkout the bench was started from cannot stand in for it.
    cwd = database.parent
    if checkout:
        cwd = Path(checkout).resolve()
        env["PYTHONPATH"] = str(cwd)
        imported = subprocess.run([sys.executable, "-c", "import ordersync_pipeline; print(ordersync_pipeline.__file__)"],
                                  env=env, cwd=cwd, capture_output=True, text=True).stdout.strip()
        if not imported or not Path(imported).is_relative_to(cwd):
            raise SystemExit(f"--compare-with {checkout}: its code is not what runs (ordersync_pipeline from {imported!r})")
    log = database.with_suffix(".log")
    with log.open("w") as output:  # a file, not a pipe: a full pipe would stall the run
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", module,
             "--select", "order_statuses", "--partition-range", f"{first}...{last}"],
            env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # rusage of this process alone: its CPU and peak RSS
        wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"pipeline run failed:\n{log.read_text()[-3000:]}")
    if module == FLOOR_MODULE:
        return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, 0)
    with duckdb.connect(default_working_path(str(database)), read_only=True) as conn:
        lines = conn.execute("SELECT count(*) FROM order_statuses").fetchall()[0][0]
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, lines)


def dlt_run(base_url: str, first: dt.date, last: dt.date, work_dir: Path) -> Run | None:
    """bench_dlt.py as its own process (CPU and RSS of its main process), or None when dlt is not installed."""
    work_dir.mkdir()
    output, errors = work_dir / "out.txt", work_dir / "err.txt"
    with output.open("w") as out, errors.open("w") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "ordersync_pipeline.bench.dlt_pipeline", base_url, str(first), str(last),
             str(work_dir / "dlt.duckdb"), str(work_dir)], cwd=work_dir, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) == 3:
        print(f"dlt left out: {errors.read_text().strip()}")
        return None
    if status != 0:
        raise SystemExit(f"dlt run failed:\n{errors.read_text()[-3000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, int(output.read_text().split()[-1]))


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
        env=env, cwd=database.parent, capture_output=True, text=True)  # its temporary Dagster home lands there
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"daily job failed:\n{completed.stderr[-3000:]}")
    with duckdb.connect(str(database), read_only=True) as conn:
        loads = conn.execute("SELECT sum(pages_fetched) FROM order_status_loads WHERE order_day = ?", [day]).fetchall()
        refresh = conn.execute("SELECT api_requests FROM order_status_refreshes ORDER BY refreshed_at DESC LIMIT 1"
                               ).fetchall()
    return int(loads[0][0] or 0) + int(refresh[0][0]), wall


if __name__ == "__main__":
    sys.exit(main())
