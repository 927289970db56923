"""`ordersync`: the demo, live look-ups and the standalone simulator.

    ordersync demo [--days 14] [--mornings 6] [--ui]  simulator + Dagster (`dg dev` with --ui), no key needed
    ordersync demo --retailers 3 [--ui]          the same for several retailers (ORDERSYNC_RETAILERS)
    ordersync across-retailers                   SQL comparing every retailer's published file
    ordersync lookup po PO_NUMBER [--json]       live look-up by PO number
    ordersync lookup supplier-order ID [--json]  live look-up by supplier order id
    ordersync simulator [--port 8765]            serve the embedded simulator until Ctrl-C
    ordersync bench [--days 90] [--latency-ms 0] measure ingest speed and memory against baselines
    ordersync report [--database PATH|URL] [--output PATH]  the analysts' file as one HTML page
"""

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ordersync_pipeline.api.errors import OrderSyncError
from ordersync_pipeline.api.client import OrderSyncClient
from ordersync_pipeline.demo_history import history_summary, morning_figures, morning_of, play_mornings
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, Faults, OrderSyncSimulator, SimulatedClock

DEMO_DATABASE = "data/demo.duckdb"
DEMO_DAGSTER_HOME = "data/dagster_home"
INSTANCE_CONFIG = Path(__file__).parent / "deploy" / "dagster.yaml"
WORKSPACE = Path(__file__).parent / "deploy" / "workspace.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        return _bench_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except OrderSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ordersync", description="OrderSync order-status pipeline tools")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the pipeline against the embedded simulator (no API key needed)")
    demo.add_argument("--days", type=int, default=14, help="how many past days to load (default 14)")
    demo.add_argument("--mornings", type=int, default=6,
                      help="of those, the last days run one simulated morning at a time (default 6), for history")
    # 200, not 300: the demo runs seven Dagster runs within ~20 s on two cores, and the history needs mornings more
    # than volume.
    demo.add_argument("--orders-per-day", type=int, default=200, help="simulated orders per day (default 200)")
    demo.add_argument("--seed", type=int, default=7, help="simulator seed (same seed, same data)")
    demo.add_argument("--database", default=DEMO_DATABASE, help=f"DuckDB file to write (default {DEMO_DATABASE})")
    demo.add_argument("--retailers", type=int, default=0,
                      help="simulate this many retailers, one key and one DuckDB folder each (ORDERSYNC_RETAILERS)")
    demo.add_argument("--ui", action="store_true", help="start `dg dev` wired to the simulator instead")
    demo.add_argument("--port", type=int, default=3000, help="Dagster UI port with --ui (default 3000)")
    demo.set_defaults(run=run_demo)

    across = commands.add_parser("across-retailers", help="print SQL that compares every retailer's published file "
                                 "(ORDERSYNC_RETAILERS, ORDERSYNC_DUCKDB_PATH); use with duckdb -init FILE")
    across.set_defaults(run=run_across_retailers)

    lookup = commands.add_parser("lookup", help="look lines up live (ORDERSYNC_API_KEY, ORDERSYNC_BASE_URL)")
    lookup.add_argument("kind", choices=("po", "supplier-order"), help="what the value is")
    lookup.add_argument("value", help="the PO number or supplier order id (any characters)")
    lookup.add_argument("--json", action="store_true", help="print the records as JSON")
    lookup.add_argument("--simulator", action="store_true", help="look up in a freshly started embedded simulator")
    lookup.set_defaults(run=run_lookup)

    report = commands.add_parser("report", help="write the published analysts' file as one self-contained HTML page")
    report.add_argument("--database", help="the analysts' DuckDB file, opened read-only (default ORDERSYNC_DUCKDB_PATH, "
                                           "else data/ordersync.duckdb), or its object-storage URL (s3://…/NAME.duckdb "
                                           "or a version's), downloaded first with the standard AWS_* variables")
    report.add_argument("--output", help="HTML file to write (default beside the database: NAME-report.html)")
    report.set_defaults(run=run_report)

    commands.add_parser("bench", help="measure ingest speed and memory (see: ordersync bench --help)")

    simulator = commands.add_parser("simulator", help="serve the embedded OrderSync simulator until Ctrl-C")
    simulator.add_argument("--port", type=int, default=8765)
    simulator.add_argument("--orders-per-day", type=int, default=300)
    simulator.add_argument("--seed", type=int, default=7)
    simulator.add_argument("--days", type=int, default=60, help="days of history before today")
    simulator.add_argument("--faults", choices=("none", "heavy"), default="none", help="inject API failures")
    simulator.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every request")
    simulator.add_argument("--pre-encoded", action="store_true",
                           help="freeze the clock and serve each by-date page from bytes encoded once (benchmarks)")
    simulator.set_defaults(run=run_simulator)
    return parser


# -- demo ------------------------------------------------------------------------------------------
DEMO_RETAILER_NAMES = ("acme", "globex", "initech", "umbrella", "hooli", "wonka")


def demo_retailer_names(count: int) -> list[str]:
    return [DEMO_RETAILER_NAMES[i] if i < len(DEMO_RETAILER_NAMES) else f"retailer_{i + 1}" for i in range(count)]


def demo_retailer_key(name: str) -> str:
    return f"{SIMULATOR_API_KEY}_{name}"


def run_demo(args: argparse.Namespace) -> int:
    if args.days < 1 or args.retailers < 0 or args.mornings < 0:
        print("error: --days must be at least 1, --retailers and --mornings at least 0", file=sys.stderr)
        return 2
    today = dt.datetime.now(dt.timezone.utc).date()
    first_day, last_day = today - dt.timedelta(days=args.days), today - dt.timedelta(days=1)
    names = demo_retailer_names(args.retailers)
    # Several retailers: different seeds, but one id seed, so PO numbers and supplier order ids overlap on
    # purpose (each retailer's tables must still hold only its own lines).
    retailers = {demo_retailer_key(name): SimulatedRetailer(seed=args.seed + i, orders_per_day=args.orders_per_day,
                                                            id_seed=args.seed) for i, name in enumerate(names)}
    retailer = SimulatedRetailer(seed=args.seed, orders_per_day=args.orders_per_day)
    # One retailer: the first days in one run, then the last `mornings` days one simulated morning at a time,
    # so the history tables (backlog per day, status spells, stuck lines) hold what daily runs build.
    mornings = min(args.mornings, args.days - 1) if not names else 0
    loaded_last = last_day - dt.timedelta(days=mornings)
    clock = SimulatedClock(morning_of(loaded_last))
    # History starts a month before the loaded range, so the refresh has older open lines to chase.
    with OrderSyncSimulator(retailer, clock=clock, first_day=first_day - dt.timedelta(days=30),
                            more_retailers=retailers) as sim:
        database = str(Path(args.database).resolve())
        os.environ.update(
            ORDERSYNC_API_KEY=SIMULATOR_API_KEY,
            ORDERSYNC_BASE_URL=sim.base_url,
            ORDERSYNC_DUCKDB_PATH=database,
            # The UI's partitions start at the first loaded day, so its partition bar shows what was loaded.
            ORDERSYNC_START_DATE=first_day.isoformat(),
        )
        if names:
            os.environ["ORDERSYNC_RETAILERS"] = ",".join(names)
            os.environ.update({f"ORDERSYNC_API_KEY_{name.upper()}": demo_retailer_key(name) for name in names})
        print(f"OrderSync simulator serving on {sim.base_url} ({args.orders_per_day} orders/day, seed {args.seed}"
              + (f"; retailers {', '.join(names)}, one key each" if names else "") + ")")
        home = _demo_dagster_home() if args.ui else None
        if args.ui and names:  # several retailers: the UI starts empty, backfills load what you pick
            return _run_dagster_ui(args.port, home)
        jobs = [f"daily_order_sync_{name}" for name in names] or ["daily_order_sync"]
        started = time.monotonic()
        for job in jobs:
            print(f"Loading {first_day} .. {loaded_last} through Dagster ({job}, one run)")
            if not run_daily_order_sync(first_day, loaded_last, job, home).success:
                print("error: the run failed; see the log above", file=sys.stderr)
                return 1
        if mornings:
            print(f"\n{mornings} mornings of daily_order_sync, the simulator's clock at 06:00 UTC of each:")
            days = [loaded_last + dt.timedelta(days=i + 1) for i in range(mornings)]
            if not play_mornings(sim, days, lambda day: run_daily_order_sync(day, day, "daily_order_sync", home,
                                                                             log_level="WARNING").success,
                                 lambda: morning_figures(database)):
                print("error: the run failed; see the log above", file=sys.stderr)
                return 1
        elapsed = time.monotonic() - started
        print(f"\nDone in {elapsed:.1f} s, {sum(sim.requests.values())} API requests.\n")
        if args.ui:
            return _run_dagster_ui(args.port, home)
        if not names:
            print(demo_summary(database))
            print("\n" + history_summary(database))
            print(f"\nDuckDB file: {database}\nOpen it read-only: duckdb -readonly {database}\n"
                  f"As one HTML page with charts: ordersync report --database {database}")
            return 0
        from ordersync_pipeline.reporting.across_retailers import across_retailers_sql, published_files_from_env

        published = published_files_from_env()
        script = Path(database).parent / "all_retailers.sql"
        script.write_text(across_retailers_sql(published))
        print(across_retailers_summary(script))
        print("\nDuckDB files, one per retailer:\n" + "\n".join(f"  {name}: {path}" for name, path in published.items()))
        print(f"Compare them in one session: duckdb -init {script}")
    return 0


def across_retailers_summary(script: Path) -> str:
    """Lines and open lines per retailer, through the cross-retailer views."""
    import duckdb
    import polars as pl

    with duckdb.connect() as conn:
        conn.execute(script.read_text())
        return "Lines per retailer (all_retailers.sql):\n" + str(pl.DataFrame(conn.sql(
            "SELECT retailer, count(*) AS lines, count(DISTINCT po_number) AS po_numbers, "
            "(SELECT count(*) FROM open_orders o WHERE o.retailer = s.retailer) AS open_lines "
            "FROM order_statuses s GROUP BY ALL ORDER BY retailer")))


def run_across_retailers(args: argparse.Namespace) -> int:
    from ordersync_pipeline.reporting.across_retailers import across_retailers_sql, published_files_from_env

    try:
        print(across_retailers_sql(published_files_from_env()), end="")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_daily_order_sync(first_day: dt.date, last_day: dt.date, job: str = "daily_order_sync",
                         dagster_home: Path | None = None, log_level: str = "INFO"):
    """Run daily_order_sync (or a retailer's copy) over a range of days in one in-process run, logging at
    `log_level`; on the instance in `dagster_home` (the UI's, so it shows these runs) or an ephemeral one."""
    from ordersync_pipeline.definitions import defs  # after the environment is set

    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home)) if dagster_home else dg.DagsterInstance.ephemeral()
    with instance:
        return defs.resolve_job_def(job).execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": first_day.isoformat(),
                  "dagster/asset_partition_range_end": last_day.isoformat()},
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            raise_on_error=False,
        )


def demo_summary(database: str) -> str:
    """Headline figures from the demo database, as an analyst would query them."""
    import duckdb
    import polars as pl

    with pl.Config(tbl_rows=40, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_width_chars=120), \
            duckdb.connect(database, read_only=True) as conn:
        sections = [
            ("Rows per day", "SELECT order_day, count(*) AS lines, count(DISTINCT order_id) AS orders "
                             "FROM order_statuses GROUP BY 1 ORDER BY 1"),
            ("Statuses", "SELECT status, count(*) AS lines FROM order_statuses GROUP BY 1 ORDER BY 2 DESC"),
            ("Lead time by carrier (days)", "SELECT carrier, count(*) AS delivered, round(avg(lead_time_days), 1) AS mean, "
                                            "round(quantile_cont(lead_time_days, 0.5), 1) AS p50, "
                                            "round(quantile_cont(lead_time_days, 0.9), 1) AS p90 "
                                            "FROM delivery_lead_times GROUP BY 1 ORDER BY 1"),
            ("Open lines by age", "SELECT age_bucket, count(*) AS lines, "
                                  "strftime(timezone('UTC', min(order_date)), '%Y-%m-%d %H:%M:%S UTC') AS oldest "
                                  "FROM open_orders GROUP BY 1 ORDER BY min(age_days)"),
        ]
        return "\n\n".join(f"{title}:\n{pl.DataFrame(conn.sql(sql))}" for title, sql in sections)


def _demo_dagster_home() -> Path:
    """The demo UI's instance folder, emptied of an earlier demo's runs (their days and files are gone)."""
    home = Path(DEMO_DAGSTER_HOME).resolve()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    return home


def _run_dagster_ui(port: int, home: Path) -> int:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    # `dg dev` (dagster-dg-cli) is what Dagster 1.13 recommends over the superseded `dagster dev`. Given the
    # packaged workspace file it loads the same code location from any folder the demo runs in.
    command = [str(Path(sys.executable).parent / "dg"), "dev", "-w", str(WORKSPACE), "-h", "127.0.0.1",
               "-p", str(port)]
    # Ctrl-C or `kill` must reach the `finally` that stops dagster dev's process group, even when this
    # process was started in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    print(f"Starting the Dagster UI on http://127.0.0.1:{port} (DAGSTER_HOME={home}); Ctrl-C stops everything.")
    print("Materialize > order_statuses > pick a date range to launch a backfill against the simulator.")
    with _process_group(command, env) as process:
        return process.wait()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _process_group(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group with SIGINT restored, and stop the whole group after."""
    process = subprocess.Popen(command, env=env, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# -- lookup ----------------------------------------------------------------------------------------
LOOKUP_COLUMNS = ("po_number", "order_status_id", "supplier_order_id", "status", "supplier", "item", "carrier",
                  "tracking_number", "order_date", "delivery_date")


def run_lookup(args: argparse.Namespace) -> int:
    if args.simulator:
        with OrderSyncSimulator() as sim:
            with OrderSyncClient(SIMULATOR_API_KEY, sim.base_url) as client:
                records = _lookup(client, args.kind, args.value)
    else:
        from ordersync_pipeline.settings import API_KEY_SETTING, base_url_from_env, secret_value
        api_key = secret_value(API_KEY_SETTING)
        if not api_key:
            print("error: ORDERSYNC_API_KEY is not set. Export the retailer's OrderSync key, or add --simulator "
                  "to look up in the embedded simulator.", file=sys.stderr)
            return 2
        with OrderSyncClient(api_key, base_url_from_env()) as client:
            records = _lookup(client, args.kind, args.value)
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    elif not records:
        print(f"No lines found for {args.kind} {args.value!r}.")
    else:
        print(format_records_table(records))
        print(f"{len(records)} line(s).")
    return 0


def _lookup(client: OrderSyncClient, kind: str, value: str) -> list:
    return client.get_by_po(value) if kind == "po" else client.get_by_supplier_order(value)


def format_records_table(records: list) -> str:
    """A fixed-width table of the look-up columns (personal data left out; --json shows everything)."""
    rows = [[str(r.get(c) or "") if isinstance(r, dict) else "" for c in LOOKUP_COLUMNS] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(LOOKUP_COLUMNS)]
    line = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([line.format(*LOOKUP_COLUMNS), line.format(*("-" * w for w in widths)),
                      *(line.format(*row) for row in rows)])


def run_report(args: argparse.Namespace) -> int:
    from ordersync_pipeline.reporting.report import ReportError, write_report
    # One setting, not Settings.from_env(): the report reads a published file and must not fail on others.
    from ordersync_pipeline.settings import analyst_path_from_env

    database = args.database or analyst_path_from_env()
    try:
        output = write_report(database, args.output)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Report written to {output.resolve()} (open it in a browser; it needs no network).")
    return 0


def _bench_main(argv: list[str]) -> int:
    from ordersync_pipeline.bench.runner import main as bench_main

    return bench_main(argv)


# -- simulator -------------------------------------------------------------------------------------
def run_simulator(args: argparse.Namespace) -> int:
    faults = Faults.heavy() if args.faults == "heavy" else Faults()
    faults.latency_seconds = args.latency_ms / 1000
    today = dt.datetime.now(dt.timezone.utc).date()
    retailer = SimulatedRetailer(seed=args.seed, orders_per_day=args.orders_per_day)
    with OrderSyncSimulator(retailer, first_day=today - dt.timedelta(days=args.days), faults=faults, port=args.port,
                            pre_encoded=args.pre_encoded) as sim:
        print(f"OrderSync simulator on {sim.base_url}\n  export ORDERSYNC_BASE_URL={sim.base_url}\n"
              f"  export ORDERSYNC_API_KEY={SIMULATOR_API_KEY}\nCtrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
