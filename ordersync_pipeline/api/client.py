"""OrderSync Order Status API client: the four endpoints, paging and retries (the errors it raises, what it
retries and the key's redaction are in api/errors.py; what one response means is in responses.py).

Plain Python + httpx, one connection per request in flight (connections.py); knows nothing of Dagster. Bodies
are checked on arrival, and records decoded when first read (a by-date day's: DayFetch.records), by
records.decode_body: records of the documented shape as RegularRecord structs (typed in native
code, no dict per record), anything else as the raw JSON values the API sent, so that normalisation sees
exactly what arrived, surprises included.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import tenacity

from ordersync_pipeline.api.connections import ConnectionLender
from ordersync_pipeline.api.errors import (
    OrderSyncConfigError,
    OrderSyncNotFoundError,
    OrderSyncPagingError,
    OrderSyncUnavailableError,
    RetryableResponse,
    WaitHonouringRetryAfter,
    describe_failure,
    is_retryable,
)
from ordersync_pipeline.api.records import as_json_value
from ordersync_pipeline.api.responses import DEFAULT_BASE_URL, Page, parse_page, wrong_base_url

MAX_PAGE_LIMIT = 100  # the API's documented maximum for `limit`
MAX_PO_NUMBERS_PER_REQUEST = 100  # the API's documented maximum for the bulk endpoint
BY_DATE_PATH = "/api/v1/orders/by-date"


@dataclass(frozen=True, eq=False)
class DayFetch:
    """Every record of one by-date day, read until consistent (see fetch_order_statuses_for_day)."""

    day: dt.date
    api_total: int
    pages_fetched: int
    passes: int
    duplicates_seen: int
    consistent: bool  # False: the API's total never matched what it returned (API data error)
    observed_at: dt.datetime | None  # the API's clock at the day's first page; None without a Date header
    # Where the records are: every record of `pages` in order (the usual day), or each line's latest copy as
    # (page, position). Kept as the pages' bytes until `records` is first read (see responses.Page).
    pages: list[Page] = field(repr=False)
    places: list[tuple[Page, int]] | None = field(default=None, repr=False)

    # On Python 3.11 a cached_property takes one lock for the whole class: two days' decoding never overlaps,
    # which costs nothing here (decoding holds the GIL anyway) and cannot deadlock (nothing else is locked inside).
    @functools.cached_property
    def records(self) -> list[Any]:
        """The day's records, one per line (records.decode_body's types), decoded on first use and kept."""
        if self.places is None:
            return [record for page in self.pages for record in page.decode_records()]
        decoded: dict[Page, list[Any]] = {}  # each page decoded once (pages hash by identity)
        records = []
        for page, position in self.places:
            if page not in decoded:
                decoded[page] = page.decode_records()
            records.append(decoded[page][position])
        return records


@dataclass
class RequestCounter:
    """Counts HTTP requests (attempts included) so runs can report what they cost the API."""

    requests: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, retry: bool) -> None:
        with self._lock:
            self.requests += 1
            self.retries += int(retry)


class RateBudget:
    """Client-side limit of requests per second, shared by every thread of one client."""

    def __init__(self, requests_per_second: float):
        if requests_per_second <= 0:
            raise OrderSyncConfigError(
                f"requests_per_second must be > 0, got {requests_per_second}; leave it unset for no limit"
            )
        self._interval = 1.0 / requests_per_second
        self._next_slot = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


def check_base_url(base_url: str) -> str:
    """Refuse URLs that would send the key in clear text, except to this machine (the simulator)."""
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise OrderSyncConfigError(
            f"ORDERSYNC_BASE_URL must be an http(s) URL such as {DEFAULT_BASE_URL}, got {base_url!r}"
        )
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
        raise OrderSyncConfigError(
            f"refusing plain-http ORDERSYNC_BASE_URL {base_url!r}: the API key would travel unencrypted. "
            "Use https://, or a loopback address (127.0.0.1, localhost) for the embedded simulator."
        )
    return base_url.rstrip("/")


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


class OrderSyncClient:
    """Typed access to the OrderSync Order Status API for one retailer (one key).

    Every request is retried on 429, 5xx, timeouts, dropped connections and bodies that are cut short or
    not JSON, with exponential backoff and jitter (tenacity), honouring Retry-After, within a total time
    budget per request. 400/401/403 fail at once with the server's message; so does 404, except that a
    look-up by PO or supplier order answered with the API's JSON 404 means "no lines" (see _look_up).
    Messages never hold the key, even when the server's error text echoes it (redact_key).
    Each request in flight has a connection of its own (connections.py), at most `max_connections` (at least
    one more than `max_concurrent_pages`) at once.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        max_attempts: int = 8,
        request_budget_seconds: float = 120.0,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        connect_timeout_seconds: float = 10.0,
        read_timeout_seconds: float = 60.0,
        max_concurrent_pages: int = 4,
        max_connections: int = 10,
        requests_per_second: float | None = None,
        page_limit: int = MAX_PAGE_LIMIT,
        max_paging_passes: int = 6,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        api_key = (api_key or "").strip()  # secrets mounted from files often end in a newline
        if not api_key:
            raise OrderSyncConfigError(
                "ORDERSYNC_API_KEY is empty: set it to the retailer's OrderSync key (pk_live_...), "
                "or run `ordersync demo` to use the embedded simulator without a key"
            )
        if not (api_key.isascii() and api_key.isprintable()) or any(c.isspace() for c in api_key):
            # Said without the value: an HTTP library's own error here would print the whole header.
            raise OrderSyncConfigError(
                "ORDERSYNC_API_KEY contains spaces or non-ASCII characters, so it cannot be a key: copy the key "
                "from OrderSync again (it looks like pk_live_ followed by letters and digits)"
            )
        if not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise OrderSyncConfigError(f"page_limit must be between 1 and {MAX_PAGE_LIMIT}, got {page_limit}")
        if max_concurrent_pages < 1:
            raise OrderSyncConfigError(f"max_concurrent_pages must be >= 1, got {max_concurrent_pages}")
        self.base_url = check_base_url(base_url)
        self._api_key = api_key  # for redact_key only; it travels in the client's headers
        self._api_answers_here = False  # set once by-date answered at base_url (see _look_up)
        self.page_limit = page_limit
        self.max_concurrent_pages = max_concurrent_pages
        self.max_paging_passes = max_paging_passes
        self.counter = RequestCounter()
        # The API's clock (`Date` header) at the latest response: when look-ups observed their statuses.
        self.last_server_time: dt.datetime | None = None
        self._rate_budget = RateBudget(requests_per_second) if requests_per_second else None
        options: dict[str, Any] = dict(
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            timeout=httpx.Timeout(read_timeout_seconds, connect=connect_timeout_seconds),
        )
        max_connections = max(max_connections, max_concurrent_pages + 1)
        # A transport given (tests, custom networking) does its own pooling: one httpx client over it.
        self._http: ConnectionLender | httpx.Client = (
            ConnectionLender(**options, max_connections=max_connections) if transport is None
            else httpx.Client(**options, transport=transport))
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_retryable),
            # stop_before_delay: never start a wait that would end past the budget.
            stop=tenacity.stop_after_attempt(max_attempts) | tenacity.stop_before_delay(request_budget_seconds),
            wait=WaitHonouringRetryAfter(backoff_initial_seconds, backoff_max_seconds),
            sleep=sleep,
            reraise=True,
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrderSyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the four endpoints -----------------------------------------------------------------------
    def get_order_statuses_page(self, start_date: dt.date, end_date: dt.date | None, page: int) -> Page:
        """One page of `GET /api/v1/orders/by-date` (end_date inclusive, limit = page_limit)."""
        params = {"start_date": start_date.isoformat(), "page": page, "limit": self.page_limit}
        if end_date is not None:
            params["end_date"] = end_date.isoformat()
        return self._by_date_page(params)

    def _by_date_page(self, params: dict[str, Any]) -> Page:
        try:
            return self._request_page("GET", BY_DATE_PATH, params=params)
        except OrderSyncNotFoundError as exc:
            raise wrong_base_url(exc, "by-date always exists") from None

    def fetch_order_statuses_for_day(self, day: dt.date) -> DayFetch:
        """Every record whose order_date falls on `day`, each exactly once.

        The API pages by offset while new orders keep arriving: a line inserted before the page being read
        shifts the rest, so one pass can return a line twice and never return the new one. Passes are
        merged by order_status_id (later reads win; the API does not delete lines) until the merged lines
        equal the `meta.total` of a pass during which the total did not move. Two identical passes that
        still disagree with their total mean the API's count itself is wrong: the records are returned
        with `consistent=False`, to be stored and flagged rather than re-read forever.
        """
        # Where each line's latest copy is (a page and the record's position in it): the records stay bytes
        # until DayFetch.records is read, so that a day in flight holds ~0.5 KB a line, not ~1.3 KB of objects.
        merged: dict[str, tuple[Page, int]] = {}
        pages_fetched = duplicates_seen = 0
        server_times: list[dt.datetime] = []
        previous_pass_ids: frozenset[str] | None = None
        for pass_number in range(1, self.max_paging_passes + 1):
            pages = self._fetch_every_page(day)
            pages_fetched += len(pages)
            server_times.extend(page.server_time for page in pages if page.server_time is not None)
            api_total = pages[-1].meta.total
            pass_ids: set[str] = set()
            id_less: list[tuple[Page, int]] = []  # records that cannot be deduplicated; normalise rejects them
            for page in pages:
                for index, record_id in enumerate(page.record_ids):
                    if not isinstance(record_id, str) or not record_id:
                        id_less.append((page, index))
                        continue
                    duplicates_seen += record_id in pass_ids
                    pass_ids.add(record_id)
                    merged[record_id] = (page, index)
            total_held_still = all(page.meta.total == api_total for page in pages)
            complete = len(merged) + len(id_less) == api_total
            if total_held_still and (complete or frozenset(pass_ids) == previous_pass_ids):
                usual = pass_number == 1 and not duplicates_seen and not id_less  # the records are the pages in order
                return DayFetch(day, api_total, pages_fetched, pass_number, duplicates_seen, consistent=complete,
                                observed_at=min(server_times, default=None), pages=pages,
                                places=None if usual else [*merged.values(), *id_less])
            previous_pass_ids = frozenset(pass_ids)
        raise OrderSyncPagingError(
            f"by-date results for {day} kept changing while paging: after {self.max_paging_passes} passes the API "
            f"reports {api_total} lines and {len(merged) + len(id_less)} distinct ones were read. Nothing was "
            "stored for this day; re-run the partition later."
        )

    def get_by_po(self, po_number: str) -> list[Any]:
        """`GET /api/v1/orders/by-po/:po_number`: every line of one PO (free text, URL-encoded)."""
        return self._look_up(f"/api/v1/orders/by-po/{_path_segment(po_number)}")

    def get_by_supplier_order(self, supplier_order_id: str) -> list[Any]:
        """`GET /api/v1/orders/by-supplier-order/:id`: every line of one supplier order."""
        return self._look_up(f"/api/v1/orders/by-supplier-order/{_path_segment(supplier_order_id)}")

    def get_by_po_numbers(self, po_numbers: Iterable[str]) -> list[Any]:
        """`POST /api/v1/orders/by-po-numbers` in batches of at most 100 distinct PO numbers."""
        unique = list(dict.fromkeys(po_numbers))
        records: list[Any] = []
        for start in range(0, len(unique), MAX_PO_NUMBERS_PER_REQUEST):
            batch = unique[start : start + MAX_PO_NUMBERS_PER_REQUEST]
            try:
                records.extend(self._collect_pages("POST", "/api/v1/orders/by-po-numbers", {"po_numbers": batch}))
            except OrderSyncNotFoundError as exc:
                # Not "none of these POs": the bulk endpoint answers with the lines it found, so a 404 means the
                # endpoint itself is missing. Reading it as empty would silently stop every refresh.
                raise wrong_base_url(exc, "the bulk endpoint leaves unknown PO numbers out") from None
        return records

    def _look_up(self, path: str) -> list[Any]:
        """A look-up's records; the API's JSON 404 (an unknown PO or supplier order) means no lines.

        A wrong ORDERSYNC_BASE_URL (an extra path, another JSON service) answers JSON 404s too, so the first
        404 is trusted only after by-date, which always exists, answers at the same base URL.
        """
        try:
            return self._collect_pages("GET", path)
        except OrderSyncNotFoundError:
            if not self._api_answers_here:
                today = dt.datetime.now(dt.timezone.utc).date()
                self._by_date_page({"start_date": today.isoformat(), "limit": 1})
                self._api_answers_here = True
            return []

    # -- paging ------------------------------------------------------------------------------------
    def _fetch_every_page(self, day: dt.date) -> list[Page]:
        """All pages of one by-date pass; page 1 reveals the total, the rest run concurrently."""
        first = self.get_order_statuses_page(day, day, 1)
        if not first.meta.has_more:
            return [first]
        per_page = first.meta.limit if first.meta.limit > 0 else self.page_limit  # the server may cap our limit
        page_count = max(2, math.ceil(first.meta.total / per_page))
        pages = [first, *self._fetch_pages(day, range(2, page_count + 1))]
        # The total may have grown while we paged: keep following has_more, one page at a time.
        while pages[-1].meta.has_more and pages[-1].record_ids:
            if len(pages) > page_count + 1000:
                raise OrderSyncPagingError(f"by-date for {day} never stopped reporting has_more after {len(pages)} pages")
            pages.append(self.get_order_statuses_page(day, day, len(pages) + 1))
        return pages

    def _fetch_pages(self, day: dt.date, numbers: range) -> list[Page]:
        """Pages `numbers` of `day`, in order, up to max_concurrent_pages at a time: this thread fetches too,
        beside max_concurrent_pages - 1 helpers, taking the next page number as each finishes one.

        Why this thread fetches rather than waits: a range keeps 8 days in flight, so a waiting thread per day
        is 8 more threads handing the GIL and the results around. A year's fetch-and-store without Dagster made
        ~112,000 voluntary context switches this way against ~150,000 (docs/benchmark.md). A failed page stops
        the others from taking new ones; its error is raised once those in flight have finished.
        """
        fetched: dict[int, Page] = {}
        unclaimed = iter(numbers)
        claiming = threading.Lock()
        failed = threading.Event()

        def fetch_until_none_left() -> None:
            while not failed.is_set():
                with claiming:
                    number = next(unclaimed, None)
                if number is None:
                    return
                try:
                    fetched[number] = self.get_order_statuses_page(day, day, number)
                except BaseException:
                    failed.set()
                    raise

        helpers = min(self.max_concurrent_pages, len(numbers)) - 1
        if helpers < 1:
            fetch_until_none_left()
        else:
            with ThreadPoolExecutor(helpers, thread_name_prefix="ordersync-page") as pool:
                helping = [pool.submit(fetch_until_none_left) for _ in range(helpers)]
                try:
                    fetch_until_none_left()
                    for helper in helping:
                        helper.result()
                finally:
                    failed.set()  # interrupted, too: leaving the pool waits only for the pages in flight
        return [fetched[number] for number in numbers]

    def _collect_pages(self, method: str, path: str, body: Any = None) -> list[Any]:
        """Records of every page of a look-up endpoint (they are rarely more than one page), as the JSON values
        the API sent: callers (the CLI's look-up, the refresh) print and normalise them as such."""
        records: list[Any] = []
        for page in self._iter_pages(method, path, body):
            records.extend(map(as_json_value, page.decode_records()))
        return records

    def _iter_pages(self, method: str, path: str, body: Any) -> Iterator[Page]:
        page_number = 1
        while True:
            params = {"page": page_number} if page_number > 1 else None
            page = self._request_page(method, path, params=params, body=body)
            yield page
            if not page.meta.has_more or not page.record_ids or page_number >= 10_000:
                return
            page_number += 1

    # -- one request, retried ----------------------------------------------------------------------
    def _request_page(self, method: str, path: str, *, params: Any = None, body: Any = None) -> Page:
        attempt_number = 0
        # One absolute URL: given a path and params, httpx parses and merges URLs three times per request,
        # a third of its CPU per by-date page.
        url = self.base_url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")

        def attempt() -> Page:
            nonlocal attempt_number
            attempt_number += 1
            if self._rate_budget is not None:
                self._rate_budget.acquire()
            self.counter.add(retry=attempt_number > 1)
            response = self._http.request(method, url, json=body)
            page = parse_page(response, method, path, self._api_key)
            if page.server_time is not None:
                self.last_server_time = page.server_time
            return page

        try:
            # copy(): a Retrying keeps per-call state, and pages are fetched from several threads.
            return self._retrying.copy()(attempt)
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol):
            # Their text can quote request headers, the key among them: say what to check instead.
            raise OrderSyncConfigError(
                f"could not send {method} {path}: the request itself is malformed (check that ORDERSYNC_API_KEY "
                "and ORDERSYNC_BASE_URL hold plain values without line breaks)"
            ) from None
        except (RetryableResponse, httpx.TransportError) as exc:
            raise OrderSyncUnavailableError(
                f"OrderSync {method} {path} still failing after {attempt_number} attempts "
                f"(last: {describe_failure(exc, self._api_key)}). The API may be down or rate-limiting; try again later, "
                "or lower the request rate."
            ) from None


def _path_segment(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise OrderSyncConfigError(f"a look-up value must be a non-empty string, got {value!r}")
    return urllib.parse.quote(value, safe="")
