"""The API key never reaches logs, run metadata, Dagster's storage, errors or DuckDB; PII is configurable,
and in hash/drop modes no personal value is written anywhere."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ordersync_pipeline.assets.order_statuses import order_statuses
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse, resources_from_env
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, Faults, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline.storage.snapshots import default_working_path
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, duckdb_columns_containing, files_containing

SECRET = "pk_live_S3CRET_k3y_that_must_never_leak"
WRONG = "pk_live_WR0NG_k3y_that_must_never_leak"


def duckdb_values_containing(database: str, needle: str) -> list[str]:
    return duckdb_columns_containing(database, [needle]).get(needle, [])


def run_daily_job(env: dict[str, str], partition: str = "2025-12-09") -> subprocess.CompletedProcess:
    """`dagster job execute` in its own process, as a deployment runs it."""
    return subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "ordersync_pipeline.definitions",
         "-j", "daily_order_sync", "--tags", json.dumps({"dagster/partition": partition})],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env})


@pytest.mark.slow
def test_the_key_leaks_nowhere_after_a_real_run_and_failed_ones(tmp_path):
    """...even when the server's error bodies echo the request headers, key included: one good run, then a run
    with a wrong key for each way a server echoes them (in its JSON error envelope, as plain text)."""
    home, database = tmp_path / "dagster_home", str(tmp_path / "ordersync.duckdb")
    home.mkdir()
    retailer = SimulatedRetailer(seed=3, orders_per_day=40)
    echoes = ("json", "text")
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY, api_key=SECRET) as sim:
        outputs = []
        for key, echo in ((SECRET, ""), *((WRONG, echo) for echo in echoes)):
            sim.faults.echo_request_headers = echo  # read by the server at every request
            completed = run_daily_job({"DAGSTER_HOME": str(home), "ORDERSYNC_API_KEY": key,
                                       "ORDERSYNC_BASE_URL": sim.base_url, "ORDERSYNC_DUCKDB_PATH": database})
            assert (completed.returncode == 0) == (key == SECRET), completed.stderr[-2000:]
            outputs.append(completed.stdout + completed.stderr)
    for output in outputs[1:]:
        assert "OrderSync refused the API key (HTTP 401" in output  # the failure is clear...
        assert "[redacted]" in output and "x-api-key" in output.lower()  # ...quotes the echoed headers...
    for secret in (SECRET, WRONG):  # ...and neither key is anywhere
        assert all(secret not in output for output in outputs)
        assert files_containing(home, secret) == []
        assert files_containing(tmp_path, secret) == []  # the DuckDB file and any WAL beside it
        for path in (database, default_working_path(database)):  # the analysts' file and the working file
            assert secret.encode() not in Path(path).read_bytes()
            assert duckdb_values_containing(path, secret) == []
    assert any(home.rglob("*.db")), "expected Dagster's event storage under DAGSTER_HOME"
    instance_runs = dg.DagsterInstance.from_config(str(home)).get_runs()
    assert len(instance_runs) == 1 + len(echoes)
    for run in instance_runs:
        assert SECRET not in str(run.run_config) and WRONG not in str(run.run_config)


def personal_values_found(folder: Path, database: str, output: str, values: set[str]) -> set[str]:
    """The values present in any file under `folder` (as UTF-8 or JSON-escaped bytes), in any value of the
    DuckDB database, or in the captured output."""
    forms = {form: value for value in values for form in (value, json.dumps(value)[1:-1])}
    blobs = [path.read_bytes() for path in folder.rglob("*") if path.is_file()] + [output.encode()]
    in_files = {value for form, value in forms.items() if any(form.encode() in blob for blob in blobs)}
    in_tables = {forms[form] for path in (database, default_working_path(database))  # analysts' and working file
                 for form in duckdb_columns_containing(path, list(forms))}
    return in_files | in_tables


HASH_KEY = "hash-key-7c1e9a0b54f2"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raw", "hash", "drop"])
def test_in_hash_and_drop_modes_no_personal_value_is_written_anywhere(tmp_path, mode):
    """Names, emails and an unlisted customer_phone field, in stored lines and in rejected records, searched
    for in everything a real run writes; raw mode proves the search finds them."""
    home, database = tmp_path / "dagster_home", str(tmp_path / "ordersync.duckdb")
    home.mkdir()
    day = dt.date(2025, 12, 9)
    # Orders exist from `day` on, so the refresh's lookback re-reads only empty days: what by-date served for
    # `day` is everything the API sent.
    with OrderSyncSimulator(SimulatedRetailer(seed=3, orders_per_day=40), clock=SimulatedClock(SIM_NOW), first_day=day,
                            faults=Faults(corrupt_every=7, extra_field_every=5)) as sim:
        completed = run_daily_job({"DAGSTER_HOME": str(home), "ORDERSYNC_API_KEY": SIMULATOR_API_KEY,
                                   "ORDERSYNC_BASE_URL": sim.base_url, "ORDERSYNC_DUCKDB_PATH": database,
                                   "ORDERSYNC_PII_MODE": mode, "ORDERSYNC_PII_HASH_KEY": HASH_KEY})
        assert completed.returncode == 0, completed.stderr[-2000:]
        sent = sim.served_records_for_days(day, day)
    rejected_phones = [r["customer_phone"] for i, r in enumerate(sent) if "customer_phone" in r and i % 7 == 0]
    assert rejected_phones, "the test needs a rejected record with an unlisted field"
    personal = {r[field] for r in sent for field in ("customer", "customer_email", "customer_phone") if field in r}
    with duckdb.connect(database, read_only=True) as conn:  # the published file holds the rejects too
        assert conn.execute("SELECT count(*) FROM order_status_rejects").fetchall()[0][0] == len(sent[::7])
    found = personal_values_found(tmp_path, database, completed.stdout + completed.stderr, personal)
    assert found == (personal if mode == "raw" else set()), sorted(found)[:5]
    # The hash key is a secret like the API key: in no file, log or output of the run.
    assert not personal_values_found(tmp_path, database, completed.stdout + completed.stderr, {HASH_KEY})


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_customer_names_and_emails_can_be_hashed_or_not_stored(simulator, database, mode):
    resources = {"ordersync": OrderSyncResource(api_key=simulator.api_key, base_url=simulator.base_url),
                 "warehouse": OrderSyncWarehouse(database=database, pii_mode=mode,
                                                 pii_hash_key=HASH_KEY if mode == "hash" else None)}
    assert dg.materialize([order_statuses], resources=resources, partition_key="2025-12-03").success
    truth = simulator.records_for_day(dt.date(2025, 12, 3))
    with duckdb.connect(database, read_only=True) as conn:
        stored = conn.execute("SELECT customer, customer_email FROM order_statuses").fetchall()
    assert len(stored) == len(truth)
    raw_values = {r["customer"] for r in truth} | {r["customer_email"] for r in truth}
    assert not raw_values & {value for row in stored for value in row}
    if mode == "drop":
        assert set(stored) == {(None, None)}
    else:
        assert all(len(name) == len(email) == 64 for name, email in stored)


def test_hash_mode_without_its_key_stops_the_definitions_loading(monkeypatch):
    monkeypatch.setenv("ORDERSYNC_PII_MODE", "hash")
    monkeypatch.delenv("ORDERSYNC_PII_HASH_KEY", raising=False)
    with pytest.raises(ValueError, match="ORDERSYNC_PII_MODE=hash needs ORDERSYNC_PII_HASH_KEY"):
        resources_from_env()
    monkeypatch.setenv("ORDERSYNC_PII_HASH_KEY", "short")  # guessable: refused like a missing one
    with pytest.raises(ValueError, match="a secret of at least 16 characters"):
        resources_from_env()
    monkeypatch.setenv("ORDERSYNC_PII_HASH_KEY", HASH_KEY)
    warehouse = resources_from_env()["warehouse"]
    assert HASH_KEY not in repr(warehouse)  # an EnvVar, resolved only when a run starts


def test_an_unknown_pii_mode_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("ORDERSYNC_PII_MODE", "encrypt")
    with pytest.raises(ValueError, match="ORDERSYNC_PII_MODE must be one of raw, hash, drop"):
        resources_from_env()
