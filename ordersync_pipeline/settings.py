"""Every ORDERSYNC_* setting, read and checked in one place: `Settings.from_env(environ, retailer)`.

A bad value fails when it is read (the definitions load before any run opens a DuckDB file) with one line
naming the variable and what it expects. This module also knows what a retailer changes in the settings
(ORDERSYNC_RETAILERS): its key variable, its DuckDB files in a folder named after it, its publish URL.

What it does not hold: secrets. The API key, the PII hash key, the SMTP password and the webhook URL (it
carries the receiver's token) are read by Dagster's EnvVar when a resource is used; `Settings` keeps only
the names of their variables. It does not build resources (resources.py and alerts.py do, from a
`Settings`), nor touch the files it names; it imports no Dagster, so the CLI can use it cheaply.
Cloud credential variables (AWS_*, ...) are read by the object-store library, not here.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ordersync_pipeline.normalise import PII_MODES
from ordersync_pipeline.storage.object_storage import (
    DEFAULT_KEEP,
    PUBLISH_KEEP_SETTING,
    PUBLISH_URL_SETTING,
    parse_publish_url,
    retailer_publish_url,
)
from ordersync_pipeline.api.responses import DEFAULT_BASE_URL
from ordersync_pipeline.storage.snapshots import DEFAULT_STORAGE_VERSION, WarehouseFileError, default_working_path

DEFAULT_DUCKDB_PATH = "data/ordersync.duckdb"
DEFAULT_START_DATE = "2025-01-01"
DEFAULT_DUCKDB_MEMORY_LIMIT = "256MB"
# DuckDB keeps the blocks it writes cached up to its memory limit, so a backfill's memory grew with the table
# it wrote (534 MB at 365 days, 567 MB at 730). Storing days needs only the days at hand and their recent
# history, so order_statuses and its checks run under this lower limit (assets/order_statuses.py).
DEFAULT_STORE_MEMORY_LIMIT = "32MB"
# 16 by-date requests in flight on a range, as 8 days of 2 pages rather than 4 of 4: each day's first page goes
# alone and its last wave is often short, so narrower days keep more of the 16 busy (a year on loopback:
# ~2 s less, December 2026). One day alone (the daily job) gets 2 pages at a time.
DEFAULT_MAX_CONCURRENT_PAGES = 2
DEFAULT_DAYS_IN_FLIGHT = 8
DEFAULT_UI_URL = "http://127.0.0.1:3000"
ANALYST_PATH_SETTING = "ORDERSYNC_DUCKDB_PATH"
WORKING_PATH_SETTING = "ORDERSYNC_WORKING_DUCKDB_PATH"
PII_HASH_KEY_SETTING = "ORDERSYNC_PII_HASH_KEY"
RETAILERS_SETTING = "ORDERSYNC_RETAILERS"
WEBHOOK_SETTING = "ORDERSYNC_ALERT_WEBHOOK_URL"
SMTP_PASSWORD_SETTING = "ORDERSYNC_ALERT_SMTP_PASSWORD"
API_KEY_SETTING = "ORDERSYNC_API_KEY"
_RETAILER_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go (alerts.py). The webhook URL and SMTP password are variable names, set only when the
    variable is set."""

    webhook_url_variable: str | None
    smtp_host: str | None
    smtp_port: int
    smtp_user: str | None
    smtp_password_variable: str | None
    smtp_from: str | None
    smtp_to: str | None
    smtp_starttls: bool
    ui_url: str
    sensor_seconds: int


@dataclass(frozen=True)
class Settings:
    """One retailer's view of the settings (retailer None: the single-retailer deployment)."""

    retailer: str | None
    retailers: tuple[str, ...]
    start_date: str
    api_key_variable: str
    base_url: str
    max_concurrent_pages: int
    days_in_flight: int
    requests_per_second: float | None
    lookback_days: int
    stuck_after_days: int
    delivery_target_days: int
    pii_mode: str
    pii_hash_key_variable: str | None  # only with pii_mode "hash"
    analyst_database: str
    working_database: str
    storage_version: str
    days_per_transaction: int
    duckdb_memory_limit: str
    store_memory_limit: str
    publish_url: str | None
    publish_keep: int
    publish_sensor_seconds: int
    freshness_hours: float
    freshness_sensor_seconds: int
    alerts: AlertSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, retailer: str | None = None) -> Settings:
        """Every setting from `environ` (default os.environ), checked; raises ValueError (WarehouseFileError for
        the working file equal to the analysts' file) naming the variable."""
        env = os.environ if environ is None else environ
        read = _Reader(env)
        pii_mode = read.choice("ORDERSYNC_PII_MODE", "raw", PII_MODES)
        # Only its length is read here: the value itself reaches the run through EnvVar.
        if pii_mode == "hash" and len(env.get(PII_HASH_KEY_SETTING, "")) < 16:
            raise ValueError(f"ORDERSYNC_PII_MODE=hash needs {PII_HASH_KEY_SETTING}: a secret of at least 16 "
                             "characters (e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`), kept "
                             "like the API key")
        analyst = analyst_path_from_env(retailer, env)
        working_setting = env.get(WORKING_PATH_SETTING)
        working = retailer_path(working_setting, retailer) if working_setting else default_working_path(analyst)
        refuse_same_file(analyst, working)
        memory_limit = read.duckdb_setting("ORDERSYNC_DUCKDB_MEMORY_LIMIT", DEFAULT_DUCKDB_MEMORY_LIMIT,
                                           "memory_limit", "a memory size such as 256MB or 2GB")
        return cls(
            retailer=retailer,
            retailers=tuple(retailers_from_env(env)),
            start_date=read.date("ORDERSYNC_START_DATE", DEFAULT_START_DATE),
            api_key_variable=api_key_setting(retailer),
            base_url=base_url_from_env(env),
            max_concurrent_pages=read.number("ORDERSYNC_MAX_CONCURRENT_PAGES", str(DEFAULT_MAX_CONCURRENT_PAGES)),
            days_in_flight=read.number("ORDERSYNC_DAYS_IN_FLIGHT", str(DEFAULT_DAYS_IN_FLIGHT)),
            requests_per_second=(read.number("ORDERSYNC_REQUESTS_PER_SECOND", "", float, minimum=0.001)
                                 if env.get("ORDERSYNC_REQUESTS_PER_SECOND") else None),
            lookback_days=read.number("ORDERSYNC_LOOKBACK_DAYS", "14", minimum=0),
            stuck_after_days=read.number("ORDERSYNC_STUCK_AFTER_DAYS", "5"),
            delivery_target_days=read.number("ORDERSYNC_DELIVERY_TARGET_DAYS", "7"),
            pii_mode=pii_mode,
            pii_hash_key_variable=PII_HASH_KEY_SETTING if pii_mode == "hash" else None,
            analyst_database=analyst,
            working_database=working,
            storage_version=read.duckdb_setting(
                "ORDERSYNC_DUCKDB_STORAGE_VERSION", DEFAULT_STORAGE_VERSION, "storage_compatibility_version",
                f"a DuckDB version such as {DEFAULT_STORAGE_VERSION}: the oldest DuckDB that must read the files"),
            days_per_transaction=read.number("ORDERSYNC_DAYS_PER_TRANSACTION", "7"),
            duckdb_memory_limit=memory_limit,
            store_memory_limit=read.store_memory_limit(memory_limit),
            publish_url=publish_url_from_env(retailer, env),
            publish_keep=read.number(PUBLISH_KEEP_SETTING, str(DEFAULT_KEEP)),
            publish_sensor_seconds=read.number("ORDERSYNC_PUBLISH_SENSOR_SECONDS", "30"),
            freshness_hours=read.number("ORDERSYNC_FRESHNESS_HOURS", "26", float, minimum=0.001),
            freshness_sensor_seconds=read.number("ORDERSYNC_FRESHNESS_SENSOR_SECONDS", "300"),
            alerts=read.alerts(),
        )


class _Reader:
    """One method per kind of value; each error is one line naming the variable and what it expects."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def number(self, name: str, default: str, kind: type = int, minimum: float = 1):
        value = self.env.get(name, default)
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number >= {minimum:g}, got {value!r}")
        return number

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.env.get(name, default)
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def date(self, name: str, default: str) -> str:
        value = self.env.get(name, default)
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} must be a date in YYYY-MM-DD form, got {value!r}") from None
        return value

    def duckdb_setting(self, name: str, default: str, setting: str, expected: str) -> str:
        """A value for DuckDB setting `setting`, checked by DuckDB itself on a throwaway in-memory connection."""
        value = self.env.get(name) or default
        problem = _duckdb_refuses(setting, value)
        if problem:
            raise ValueError(f"{name} must be {expected}, got {value!r} ({problem})") from None
        return value

    def store_memory_limit(self, duckdb_limit: str) -> str:
        """ORDERSYNC_STORE_MEMORY_LIMIT: never above ORDERSYNC_DUCKDB_MEMORY_LIMIT. Set above it, it is refused;
        left unset, the default (32MB) is lowered to the DuckDB limit when that is lower."""
        name = "ORDERSYNC_STORE_MEMORY_LIMIT"
        value = self.duckdb_setting(name, DEFAULT_STORE_MEMORY_LIMIT, "memory_limit", "a memory size such as 32MB")
        if memory_bytes(value) <= memory_bytes(duckdb_limit):
            return value
        if self.env.get(name):
            raise ValueError(f"{name} must not be above ORDERSYNC_DUCKDB_MEMORY_LIMIT ({duckdb_limit}), got {value!r}")
        return duckdb_limit

    def alerts(self) -> AlertSettings:
        env = self.env
        host = env.get("ORDERSYNC_ALERT_SMTP_HOST") or None
        if host:
            for name in ("ORDERSYNC_ALERT_SMTP_FROM", "ORDERSYNC_ALERT_SMTP_TO"):
                if not env.get(name):
                    raise ValueError(f"{name} must be set when ORDERSYNC_ALERT_SMTP_HOST is ({host!r})")
        return AlertSettings(
            webhook_url_variable=WEBHOOK_SETTING if env.get(WEBHOOK_SETTING) else None,
            smtp_host=host,
            smtp_port=self.number("ORDERSYNC_ALERT_SMTP_PORT", "587"),
            smtp_user=env.get("ORDERSYNC_ALERT_SMTP_USER") or None,
            smtp_password_variable=SMTP_PASSWORD_SETTING if env.get(SMTP_PASSWORD_SETTING) else None,
            smtp_from=env.get("ORDERSYNC_ALERT_SMTP_FROM") or None,
            smtp_to=env.get("ORDERSYNC_ALERT_SMTP_TO") or None,
            smtp_starttls=self.choice("ORDERSYNC_ALERT_SMTP_STARTTLS", "true", ("true", "false")) == "true",
            ui_url=env.get("ORDERSYNC_UI_URL") or DEFAULT_UI_URL,
            sensor_seconds=self.number("ORDERSYNC_ALERT_SENSOR_SECONDS", "30"),
        )


# Settings are read at every definitions load and by every run's config defaults: each DuckDB verdict is kept.
@functools.lru_cache(maxsize=64)
def _duckdb_refuses(setting: str, value: str) -> str | None:
    """DuckDB's own words refusing `value` for `setting` (its first line), or None if it takes it."""
    try:
        _set_on_scratch(setting, value)
    except duckdb.Error as exc:
        return str(exc).splitlines()[0][:150]
    return None


@functools.lru_cache(maxsize=64)
def memory_bytes(size: str) -> int:
    """A DuckDB memory size ('32MB', '2GiB') in bytes, as DuckDB itself reads it."""
    return size_in_bytes(_set_on_scratch("memory_limit", size))


_scratch_lock = threading.Lock()
_scratch_by_process: dict[int, duckdb.DuckDBPyConnection] = {}


def _scratch() -> duckdb.DuckDBPyConnection:
    # One in-memory database per process for every verdict: opening one costs ~70 ms the first time and ~25 ms
    # after, and every run worker and command reads the settings (5 openings were ~0.15 s of each process).
    # Per process id: a forked child opens its own and leaves the inherited one alone (closing it there crashes).
    pid = os.getpid()
    if pid not in _scratch_by_process:
        _scratch_by_process[pid] = duckdb.connect(":memory:")
    return _scratch_by_process[pid]


def _new_scratch_lock() -> None:
    global _scratch_lock
    _scratch_lock = threading.Lock()  # a fork can happen while another thread holds it


os.register_at_fork(after_in_child=_new_scratch_lock)


def _set_on_scratch(setting: str, value: str) -> str:
    """SET `setting` to `value` on the scratch database (DuckDB raises the same error as for a connection's
    config) and return the setting as DuckDB then reports it."""
    with _scratch_lock:
        conn = _scratch()
        conn.execute(f"SET {setting} = '{value.replace(chr(39), chr(39) * 2)}'")
        return conn.execute("SELECT current_setting(?)", [setting]).fetchall()[0][0]


_SIZE_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}


def size_in_bytes(size: str) -> int:
    """A size as DuckDB prints it ('244.1 MiB', '0 bytes'), in bytes."""
    match = re.fullmatch(r"([\d.]+) (\w+)", size.strip())
    if not match or match[2] not in _SIZE_UNITS:
        raise ValueError(f"unexpected DuckDB memory size {size!r}")
    return int(float(match[1]) * _SIZE_UNITS[match[2]])


# Single settings, for commands that need one and must not fail on the others (cli.py's lookup and report).

def base_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    return (os.environ if environ is None else environ).get("ORDERSYNC_BASE_URL", DEFAULT_BASE_URL)


def analyst_path_from_env(retailer: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The analysts' file: ORDERSYNC_DUCKDB_PATH (default data/ordersync.duckdb), in the retailer's folder."""
    env = os.environ if environ is None else environ
    return retailer_path(env.get(ANALYST_PATH_SETTING) or DEFAULT_DUCKDB_PATH, retailer)


def retailers_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The retailer names in ORDERSYNC_RETAILERS (e.g. `acme,globex`); empty when unset (one retailer, as ever)."""
    value = (os.environ if environ is None else environ).get(RETAILERS_SETTING, "")
    names = [name.strip() for name in value.split(",")] if value.strip() else []
    bad = [name for name in names if not _RETAILER_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"{RETAILERS_SETTING} must list retailer names of lower-case letters, digits and _ separated "
                         f"by commas (e.g. acme,globex); got {value!r}, where {', '.join(map(repr, bad))} is not such a "
                         "name")
    if len(set(names)) != len(names):
        raise ValueError(f"{RETAILERS_SETTING} names a retailer twice: {value!r}")
    return names


def api_key_setting(retailer: str | None) -> str:
    """The variable holding the OrderSync key: ORDERSYNC_API_KEY, or ORDERSYNC_API_KEY_ACME for retailer acme."""
    return f"{API_KEY_SETTING}_{retailer.upper()}" if retailer else API_KEY_SETTING


def api_key_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The names of every OrderSync key variable set (to redact their values from error text; alerts.py)."""
    env = os.environ if environ is None else environ
    return [name for name in env if name == API_KEY_SETTING or name.startswith(API_KEY_SETTING + "_")]


def secret_value(variable: str, environ: Mapping[str, str] | None = None) -> str:
    """A secret's value, read at the moment of use and never kept (the CLI's `lookup`; Dagster code uses EnvVar)."""
    return (os.environ if environ is None else environ).get(variable, "")


def retailer_path(path: str, retailer: str | None) -> str:
    """`path` moved into a folder named after the retailer: data/ordersync.duckdb -> data/acme/ordersync.duckdb."""
    return str(Path(path).parent / retailer / Path(path).name) if retailer else path


def refuse_same_file(published: str, working: str) -> None:
    """The working file must not be the analysts' file: publishing would copy a file over itself, and an
    analyst's session would block every run again."""
    def real(path: str) -> str:
        return os.path.realpath(os.path.abspath(path))
    same = real(published) == real(working)
    if not same and os.path.exists(published) and os.path.exists(working):
        same = os.path.samefile(published, working)  # hard links
    if same:
        raise WarehouseFileError(
            f"{WORKING_PATH_SETTING}={working} is the same file as {ANALYST_PATH_SETTING}={published}: the pipeline "
            f"writes its working file and publishes a copy for analysts, so they must differ. Unset "
            f"{WORKING_PATH_SETTING} (it defaults to a hidden folder beside the analysts' file) or point it elsewhere.")


def publish_url_setting(retailer: str | None) -> str:
    """The variable naming a retailer's own publish URL: ORDERSYNC_PUBLISH_URL_ACME for retailer acme."""
    return f"{PUBLISH_URL_SETTING}_{retailer.upper()}" if retailer else PUBLISH_URL_SETTING


def publish_url_from_env(retailer: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Where the analysts' file is published in object storage, checked; None when ORDERSYNC_PUBLISH_URL is unset.

    A retailer publishes to ORDERSYNC_PUBLISH_URL_<RETAILER> if set, else to ORDERSYNC_PUBLISH_URL with the
    retailer's name as a folder before the file name (as retailer_path() does for local files).
    """
    env = os.environ if environ is None else environ
    if retailer and env.get(publish_url_setting(retailer)):
        setting = publish_url_setting(retailer)
        url = env[setting]
    elif env.get(PUBLISH_URL_SETTING):
        setting = PUBLISH_URL_SETTING
        parse_publish_url(env[setting], setting)  # the shared URL itself must be good too
        url = retailer_publish_url(env[setting], retailer)
    else:
        return None
    parse_publish_url(url, setting)
    return url
