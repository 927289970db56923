"""The analysts' snapshot in object storage (ORDERSYNC_PUBLISH_URL): every publish a version, the URL the latest.

A publish uploads the local published file once as `<URL without .duckdb>/snapshots/<YYYYMMDDTHHMMSSZ>.duckdb`
(multipart, parts in parallel), then makes the URL's object the same bytes with a server-side copy, then
deletes versions beyond the newest `keep`. Object stores replace an object whole (a multipart upload appears
only when completed; a copy is one request), so a failed or killed publish leaves the URL's object and every
earlier version as they were: at worst, an uploaded version that never became the latest.

Client: obstore (Rust object_store): S3 and S3-compatible stores (MinIO, R2, Ceph), GCS and Azure from one
API, with multipart uploads and server-side copy. Credentials come only from the variables each cloud's
tools read (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL; the
GOOGLE_* and AZURE_* equivalents), which obstore's constructors read themselves; this module never holds a
credential, and every message it writes has their values redacted. Only S3 (against moto) is tested here;
GCS and Azure go through the same calls, untested.

Knows no Dagster and no DuckDB.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import tenacity

PUBLISH_URL_SETTING = "ORDERSYNC_PUBLISH_URL"
PUBLISH_KEEP_SETTING = "ORDERSYNC_PUBLISH_KEEP"
DEFAULT_KEEP = 30
VERSIONS_FOLDER = "snapshots"
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
_VERSION_NAME = re.compile(r"\d{8}T\d{6}Z\.duckdb")

# The store each scheme means, and the variables its tools read for a custom endpoint (checked: plain http
# only on loopback, as for the API).
SCHEMES = {"s3": "S3", "gs": "GCS", "az": "Azure", "abfs": "Azure", "abfss": "Azure"}
ENDPOINT_VARIABLES = {
    "S3": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT"),
    "GCS": ("GOOGLE_BASE_URL",),
    "Azure": ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"),
}
# Values redacted from every message, whatever a server or the library echoes back.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_MASTER_KEY", "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_TOKEN", "AZURE_CLIENT_SECRET",
)
REDACTED = "[redacted]"

# Parts of 8 MiB, 8 at a time: a 1 GB file is 120 parts, ~64 MB in flight (S3 allows 10,000 parts per upload).
CHUNK_BYTES = 8 * 1024 * 1024
CONCURRENT_PARTS = 8
# obstore retries each request (each part) a little itself; tenacity retries a whole step on what stays
# transient (5xx, 408, 429, connection errors), with backoff. Refusals (403, 404) fail at once.
REQUEST_RETRIES = 2
STEP_ATTEMPTS = 4
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 20.0


class PublishSettingError(ValueError):
    """ORDERSYNC_PUBLISH_URL (or a retailer's) cannot be used; the message names the setting."""


class UploadError(Exception):
    """Publishing to object storage failed; one line naming the URL and what to do, no credential."""


@dataclass(frozen=True)
class SnapshotLocation:
    """Where a snapshot is published: `s3://analytics/acme/ordersync.duckdb` -> bucket `analytics`, key
    `acme/ordersync.duckdb`, versions under `acme/ordersync/snapshots/`."""

    url: str
    scheme: str
    bucket: str
    key: str

    @property
    def store_url(self) -> str:
        return f"{self.scheme}://{self.bucket}"

    @property
    def versions_prefix(self) -> str:
        return f"{self.key[:-len('.duckdb')]}/{VERSIONS_FOLDER}/"

    def version_key(self, published_at: dt.datetime) -> str:
        return f"{self.versions_prefix}{published_at.astimezone(dt.timezone.utc).strftime(VERSION_FORMAT)}.duckdb"

    def url_of(self, key: str) -> str:
        return f"{self.store_url}/{key}"


def parse_publish_url(url: str, setting: str = PUBLISH_URL_SETTING) -> SnapshotLocation:
    """The location `url` names, or one line naming `setting` and what is wrong (checked when definitions load)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise PublishSettingError(
            f"{setting}={url}: unknown scheme {parts.scheme + '://' if parts.scheme else '(none)'}; use "
            "s3://bucket/path/name.duckdb (AWS S3, MinIO, R2, Ceph), gs://bucket/… or az://container/…")
    if not parts.netloc:
        raise PublishSettingError(f"{setting}={url}: no bucket; use {scheme}://bucket/path/name.duckdb")
    if parts.password is not None:
        # Not even redacted: a URL is shown in metadata and logs. (abfs:// URLs carry container@account, no password.)
        raise PublishSettingError(f"{setting}: the URL holds a password; remove it and set the store's standard "
                                  "credential variables (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, …) instead")
    key = parts.path.lstrip("/")
    if parts.query or parts.fragment:
        raise PublishSettingError(f"{setting}={url}: no ?query or #fragment; use {scheme}://bucket/path/name.duckdb")
    if not key.endswith(".duckdb") or key == ".duckdb" or key.endswith("/.duckdb") or "//" in key:
        raise PublishSettingError(f"{setting}={url}: the URL must name a .duckdb file inside the bucket, e.g. "
                                  f"{scheme}://{parts.netloc}/ordersync/ordersync.duckdb")
    endpoint_allows_http(SCHEMES[scheme], setting)
    return SnapshotLocation(url, scheme, parts.netloc, key)


def endpoint_allows_http(store: str, setting: str = PUBLISH_URL_SETTING) -> bool:
    """True if the store's configured endpoint is plain http on loopback; refuses plain http elsewhere."""
    allow = False
    for variable in ENDPOINT_VARIABLES[store]:
        endpoint = os.environ.get(variable)
        if not endpoint:
            continue
        parts = urlsplit(endpoint)
        if parts.scheme == "http":
            if not _is_loopback(parts.hostname or ""):
                raise PublishSettingError(
                    f"{setting}: {variable}={endpoint} is plain http to a host other than loopback, which would send "
                    "the snapshot and signed requests in clear; use https (plain http only on 127.0.0.1, localhost "
                    "or ::1)")
            allow = True
        elif parts.scheme != "https":
            raise PublishSettingError(f"{setting}: {variable}={endpoint} must be an https:// URL (or http:// on "
                                      "loopback)")
    return allow


def retailer_publish_url(url: str, retailer: str | None) -> str:
    """`url` with the retailer's folder before the file name: s3://b/x/ordersync.duckdb -> s3://b/x/acme/ordersync.duckdb."""
    if not retailer:
        return url
    head, _, name = url.rpartition("/")
    return f"{head}/{retailer}/{name}"


@dataclass(frozen=True)
class UploadedSnapshot:
    url: str  # the latest: what analysts attach
    version_url: str  # this publish's immutable copy
    size_bytes: int
    uploaded_at: dt.datetime
    seconds: float
    versions_kept: list[str]  # URLs, oldest first
    versions_deleted: list[str]
    cleanup_error: str | None  # old versions that could not be deleted (the publish itself succeeded)


def upload_snapshot(local_file: str, url: str, published_at: dt.datetime, keep: int = DEFAULT_KEEP,
                    attempts: int = STEP_ATTEMPTS, on_retry: Callable[[str], None] | None = None) -> UploadedSnapshot:
    """Publish `local_file` (a complete, checkpointed DuckDB file) as a new version and as `url`'s object.

    Steps: upload the version (multipart for large files), check its size, server-side copy it over the
    URL's object, then delete versions beyond the newest `keep`. Raises UploadError (one line) if the
    upload or the copy fails after retries; the URL's object and the kept versions are then unchanged.
    """
    import obstore

    started = time.monotonic()
    location = parse_publish_url(url)
    store = open_store(location)
    version_key = location.version_key(published_at)
    size = os.path.getsize(local_file)
    step = _stepper(location, attempts, on_retry)
    if step("check the version name is free", lambda: _exists(store, version_key)):
        # Versions are immutable: never overwrite one (two publishes within one second, or a clock gone back).
        raise UploadError(f"publishing {url} failed: the version {location.url_of(version_key)} exists already; "
                           "publish again in a second. The URL's object and the kept versions are unchanged.")
    step("upload the new version", lambda: obstore.put(store, version_key, Path(local_file), chunk_size=CHUNK_BYTES,
                                                       max_concurrency=CONCURRENT_PARTS))
    stored = step("check the uploaded version", lambda: obstore.head(store, version_key))["size"]
    if stored != size:
        raise UploadError(f"publishing to {url} failed: the store holds {stored} bytes for "
                           f"{location.url_of(version_key)}, the file has {size}; the URL still holds the previous "
                           "version. Run the publish again.")
    step("replace the latest with the new version", lambda: obstore.copy(store, version_key, location.key))
    uploaded_at = dt.datetime.now(dt.timezone.utc)
    kept, deleted, cleanup_error = _keep_newest(store, location, keep, step, version_key)
    return UploadedSnapshot(url, location.url_of(version_key), size, uploaded_at, time.monotonic() - started,
                            kept, deleted, cleanup_error)


def list_versions(url: str) -> list[str]:
    """The version URLs published under `url`, oldest first."""
    location = parse_publish_url(url)
    return [location.url_of(key) for key in _version_keys(open_store(location), location)]


def download(url: str, destination: str, attempts: int = STEP_ATTEMPTS) -> int:
    """Download the object at `url` (the latest or a version) to `destination`; returns its size."""
    import obstore

    location = parse_publish_url(url)
    store = open_store(location)

    def fetch() -> int:
        size = 0
        with open(destination, "wb") as out:
            for chunk in obstore.get(store, location.key).stream(min_chunk_size=CHUNK_BYTES):
                out.write(chunk)
                size += len(chunk)
        return size

    return _stepper(location, attempts, None, doing="downloading")("download", fetch)


def open_store(location: SnapshotLocation):
    """An obstore store for the location's bucket; credentials and endpoint from the environment only."""
    from obstore.store import from_url

    allow_http = endpoint_allows_http(SCHEMES[location.scheme])
    return from_url(location.store_url, client_options={"allow_http": allow_http, "timeout": dt.timedelta(minutes=5)},
                    retry_config={"max_retries": REQUEST_RETRIES, "retry_timeout": dt.timedelta(minutes=2),
                                  "backoff": {"init_backoff": dt.timedelta(milliseconds=200),
                                              "max_backoff": dt.timedelta(seconds=5)}})


def _version_keys(store, location: SnapshotLocation) -> list[str]:
    import obstore

    keys = [entry["path"] for batch in obstore.list(store, location.versions_prefix) for entry in batch]
    # Only names this module writes: anything else someone put in the folder is left alone.
    return sorted(k for k in keys if _VERSION_NAME.fullmatch(k[len(location.versions_prefix):]))


def _exists(store, key: str) -> bool:
    import obstore

    try:
        # A one-byte ranged GET rather than HEAD: a refused GET carries the store's error code in its body.
        obstore.get_range(store, key, start=0, length=1)
    except FileNotFoundError:
        return False
    return True


def _keep_newest(store, location: SnapshotLocation, keep: int, step,
                 new_key: str) -> tuple[list[str], list[str], str | None]:
    import obstore

    try:
        keys = step("list the versions", lambda: _version_keys(store, location))
        # Newest by name; the version just published stays even if a clock gone back named older ones newer.
        old = [k for k in keys[:-keep] if k != new_key]
        kept = [k for k in keys if k not in old]
        if old:
            step("delete old versions", lambda: obstore.delete(store, old))
    except UploadError as exc:
        return [], [], str(exc)
    return [location.url_of(k) for k in kept], [location.url_of(k) for k in old], None


def _stepper(location: SnapshotLocation, attempts: int, on_retry: Callable[[str], None] | None,
             doing: str = "publishing"):  # or "downloading"
    """Runs one step with retries on transient errors; its final error becomes one redacted UploadError line."""

    def step(what: str, call: Callable):
        def log_retry(state: tenacity.RetryCallState) -> None:
            if on_retry and state.outcome:
                on_retry(f"{what} for {location.url} failed (attempt {state.attempt_number} of {attempts}): "
                         f"{describe_error(state.outcome.exception())}; retrying")

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient), stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential_jitter(initial=BACKOFF_INITIAL_SECONDS, max=BACKOFF_MAX_SECONDS),
            before_sleep=log_retry, reraise=True)
        try:
            return retrying(call)
        except Exception as exc:  # obstore's errors, OSError, timeouts: all said in one line below
            status = _status(exc)
            advice = _advice(exc, status)
            kept = " The URL's object and the kept versions are unchanged." if doing == "publishing" else ""
            raise UploadError(f"{doing} {location.url} failed at '{what}': {describe_error(exc)}. {advice}{kept}"
                               ) from None

    return step


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a server error, throttling, a timeout or a broken connection; never a refusal."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if not type(exc).__module__.startswith("obstore"):
        return False
    status = _status(exc)
    return status is None or status >= 500 or status in (408, 429)


def describe_error(exc: BaseException | None) -> str:
    """The error's first line, the store's error code and status, with every credential value redacted."""
    if exc is None:
        return "unknown error"
    text = str(exc).split("\nDebug source", 1)[0]
    code = re.search(r"<Code>([^<]{1,80})</Code>", text)
    message = re.search(r"<Message>([^<]{1,200})</Message>", text)
    status = _status(exc)
    if code or message:
        said = f"HTTP {status} {code[1] if code else ''}: {message[1] if message else ''}".strip()
    else:
        said = re.sub(r"\s+", " ", text).strip()[:300] or type(exc).__name__
        said = f"{type(exc).__name__}: {said}"
    return redact(said.rstrip(". "))


def redact(text: str) -> str:
    for variable in CREDENTIAL_VARIABLES:
        value = os.environ.get(variable)
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    return text


def _status(exc: BaseException) -> int | None:
    found = re.search(r"status(?: code)?: (\d{3})", str(exc))
    return int(found[1]) if found else None


def _advice(exc: BaseException, status: int | None) -> str:
    text = str(exc)
    if "NoSuchBucket" in text:
        return "Create the bucket, or fix the bucket in the URL."
    if status in (401, 403) or isinstance(exc, PermissionError) or "SignatureDoesNotMatch" in text:
        return ("Check the credentials in the standard variables (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/"
                "AWS_SESSION_TOKEN, or GOOGLE_*/AZURE_*) and that they may write under this prefix.")
    if isinstance(exc, FileNotFoundError):
        return "Check the bucket and path in the URL."
    return "The store or the network failed after retries; try again later."


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
