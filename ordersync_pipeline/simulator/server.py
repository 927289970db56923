"""The embedded OrderSync simulator: the four documented endpoints on loopback, over seeded data.

It answers as the reference describes (X-API-Key auth, `{data, meta}` envelope, by-date paging with a
limit of at most 100, bulk look-ups of at most 100 PO numbers) and decides what the reference leaves
open, as our client assumes: dates are UTC days, `end_date` is inclusive, by-date results are ordered by
(order_date, order_status_id), errors are JSON `{"error": message}` with 400/401/404/429/5xx. An unknown
PO or supplier order is answered with no lines, or with a 404 error (`not_found_style`): real APIs differ.

Faults can be switched on to behave like a hostile production API (see `Faults`). This module holds the
data and state behind the answers; `http_handler.py` turns requests into them.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from ordersync_pipeline.simulator.http_handler import make_handler
from ordersync_pipeline.simulator.retailer import SimulatedLine, SimulatedRetailer

SIMULATOR_API_KEY = "pk_test_ordersync_simulator"
_CACHED_DAYS = 64
NOT_FOUND_STYLES = ("empty", "404")
ECHO_STYLES = ("", "json", "text")


@dataclass
class Faults:
    """Probabilities (0..1) of each failure per request, and fixed latency, like a real API on a bad day."""

    rate_limited: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 500/502/503
    dropped: float = 0.0  # connection closed without an answer
    truncated: float = 0.0  # body cut short (half the JSON, then the connection closes)
    slow: float = 0.0  # answer after slow_seconds
    slow_seconds: float = 1.0
    latency_seconds: float = 0.0  # added to every request (a real API across the internet)
    paging_drift: float = 0.0  # chance that a by-date page > 1 first inserts new lines into that day
    paging_drift_events_per_day: int = 2  # late arrivals stop after this many per day, as they do for past days
    retry_after_seconds: float = 0.05
    corrupt_every: int = 0  # every n-th line of a by-date day is served with an unparseable order_date
    extra_field_every: int = 0  # every n-th line of a by-date day carries customer_phone, a field not in the reference
    # "json" or "text": error bodies (400/401/404/429/5xx) quote the request headers, API key included, as a
    # debugging proxy might, in the JSON error envelope or as plain text.
    echo_request_headers: str = ""
    total_offset: int = 0  # added to by-date's meta.total on every page: an API whose count is always wrong
    seed: int = 1

    @classmethod
    def heavy(cls) -> Faults:
        return cls(rate_limited=0.08, server_error=0.08, dropped=0.04, truncated=0.04, slow=0.02,
                   slow_seconds=0.3, paging_drift=0.3)


class SimulatedClock:
    """The simulator's 'now': real time by default, or a fixed moment that tests advance."""

    def __init__(self, fixed: dt.datetime | None = None):
        self._fixed = fixed

    def now(self) -> dt.datetime:
        if self._fixed is not None:
            return self._fixed
        # Real time moves in whole minutes here, so the pages of one day are served from one snapshot
        # (built once) instead of rebuilding every line's record for every page request.
        return dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)

    def set(self, moment: dt.datetime) -> None:
        self._fixed = moment

    def advance(self, days: float = 0, hours: float = 0) -> dt.datetime:
        self._fixed = self.now() + dt.timedelta(days=days, hours=hours)
        return self._fixed


class OrderSyncSimulator:
    """Serves a SimulatedRetailer on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(
        self,
        retailer: SimulatedRetailer | None = None,
        *,
        clock: SimulatedClock | None = None,
        first_day: dt.date | None = None,
        api_key: str = SIMULATOR_API_KEY,
        faults: Faults | None = None,
        not_found_style: str = "empty",
        port: int | None = 0,
        more_retailers: dict[str, SimulatedRetailer] | None = None,
        pre_encoded: bool = False,
    ):
        """`more_retailers` are other retailers served under their own API keys (key -> retailer), on the same
        clock, first day and faults; `port=None` builds a simulator that only such a server answers for."""
        if not_found_style not in NOT_FOUND_STYLES:
            raise ValueError(f"not_found_style must be one of {', '.join(NOT_FOUND_STYLES)}, got {not_found_style!r}")
        self.not_found_style = not_found_style
        self.retailer = retailer or SimulatedRetailer()
        self.clock = clock or SimulatedClock()
        # Orders exist from first_day on; look-ups by PO search from there to today.
        self.first_day = first_day or (self.clock.now().date() - dt.timedelta(days=60))
        self.api_key = api_key
        self.faults = faults or Faults()
        if self.faults.echo_request_headers not in ECHO_STYLES:
            raise ValueError(f"Faults.echo_request_headers must be one of {', '.join(map(repr, ECHO_STYLES))}, "
                             f"got {self.faults.echo_request_headers!r}")
        # Benchmarks: each by-date page is encoded once and then served as stored bytes, so the simulator's own
        # JSON encoding does not set the speed limit the client is measured against. Needs data that does not
        # change between requests: a fixed clock and no record faults.
        self.encoded_pages: dict[tuple[str, str, dt.datetime], bytes] | None = None
        if pre_encoded:
            f = self.faults
            if f.paging_drift or f.corrupt_every or f.extra_field_every or f.total_offset:
                raise ValueError("pre_encoded pages need data that holds still: switch off paging_drift, "
                                 "corrupt_every, extra_field_every and total_offset")
            self.clock = SimulatedClock(self.clock.now())
            self.encoded_pages = {}
        self.requests: Counter[str] = Counter()  # endpoint name -> requests answered (faults included)
        self.drift_events: Counter[dt.date] = Counter()  # day -> times late lines were inserted while paging
        self.arrivals: list[float] = []  # time.monotonic() of each request's arrival (faults included)
        self.peak_in_flight = 0  # most requests being answered at once
        self._in_flight = 0
        self._fault_rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._indexed_through: dt.date = self.first_day - dt.timedelta(days=1)
        self._by_po: dict[str, list[SimulatedLine]] = {}
        self._by_supplier_order: dict[str, list[SimulatedLine]] = {}
        self._day_cache: dict[dt.date, tuple[tuple[dt.datetime, int], list[dict]]] = {}
        self._day_lengths: dict[tuple[dt.date, dt.datetime, int], int] = {}
        # Each key sees its own retailer only, as OrderSync's keys do.
        self.retailers_by_key: dict[str, OrderSyncSimulator] = {api_key: self, **{
            key: OrderSyncSimulator(other, clock=self.clock, first_day=self.first_day, api_key=key, faults=self.faults,
                                    not_found_style=not_found_style, port=None)
            for key, other in (more_retailers or {}).items()}}
        self._server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self)) if port is not None else None
        if self._server is not None:
            self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OrderSyncSimulator:
        self._thread = threading.Thread(target=self._server.serve_forever, name="ordersync-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OrderSyncSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- truth, as the API would show it now ------------------------------------------------------
    def records_for_day(self, day: dt.date) -> list[dict]:
        if day < self.first_day:
            return []
        now = self.clock.now()
        late_lines = self.retailer.late_line_count(day)
        with self._lock:
            cached = self._day_cache.get(day)
        if cached is not None and cached[0] == (now, late_lines):
            return cached[1]  # pages of one day at one moment: build the records once, not per page
        records = self.retailer.records_for_day(day, now)
        with self._lock:
            self._day_cache[day] = ((now, late_lines), records)
            while len(self._day_cache) > _CACHED_DAYS:  # a year of records would not fit comfortably
                self._day_cache.pop(next(iter(self._day_cache)))
        return records

    def records_for_days(self, first: dt.date, last: dt.date) -> list[dict]:
        days = (first + dt.timedelta(days=i) for i in range((last - first).days + 1))
        return [record for day in days for record in self.records_for_day(day)]

    def served_records_for_days(self, first: dt.date, last: dt.date) -> list[dict]:
        """What by-date sends for the range: the truth, with the record faults switched on applied."""
        records = self.records_for_days(first, last)
        corrupt_every, extra_field_every = self.faults.corrupt_every, self.faults.extra_field_every
        if not (corrupt_every or extra_field_every):
            return records
        served = []
        for i, record in enumerate(records):
            if corrupt_every and i % corrupt_every == 0:
                record = {**record, "order_date": "31/12/2025 9:00"}
            if extra_field_every and i % extra_field_every == 0:
                record = {**record, "customer_phone": _phone_number(record["order_status_id"])}
            served.append(record)
        return served

    def served_page(self, first: dt.date, last: dt.date, offset: int, limit: int) -> tuple[list[dict], int]:
        """`limit` served records of the range from `offset`, and how many the range has: without record
        faults, only the days the page touches are sliced, so a long range costs per page, not per range."""
        if self.faults.corrupt_every or self.faults.extra_field_every:
            records = self.served_records_for_days(first, last)
            return records[offset : offset + limit], len(records)
        page: list[dict] = []
        total = 0
        for day in (first + dt.timedelta(days=i) for i in range((last - first).days + 1)):
            length = self._day_length(day)
            start = max(0, offset - total)
            if len(page) < limit and start < length:
                page.extend(self.records_for_day(day)[start : start + limit - len(page)])
            total += length
        return page, total

    def _day_length(self, day: dt.date) -> int:
        """len(records_for_day(day)), remembered (a few bytes a day) for as long as the day's snapshot holds."""
        key = (day, self.clock.now(), self.retailer.late_line_count(day))
        with self._lock:
            length = self._day_lengths.get(key)
        if length is None:
            length = len(self.records_for_day(day))
            with self._lock:
                if len(self._day_lengths) > 10_000:  # snapshots of past minutes: a long-running simulator's
                    self._day_lengths.clear()
                self._day_lengths[key] = length
        return length

    def records_for_po(self, po_number: str) -> list[dict]:
        return self._lookup(self._by_po, po_number)

    def records_for_supplier_order(self, supplier_order_id: str) -> list[dict]:
        return self._lookup(self._by_supplier_order, supplier_order_id)

    def _lookup(self, index: dict[str, list[SimulatedLine]], key: str) -> list[dict]:
        now = self.clock.now()
        self._index_through(now.date())
        lines = sorted(index.get(key, []), key=lambda line: (line.order_date, line.order_status_id))
        return [r for line in lines if (r := line.record_at(now)) is not None]

    def _index_through(self, last_day: dt.date) -> None:
        with self._index_lock:
            while self._indexed_through < last_day:
                self._indexed_through += dt.timedelta(days=1)
                self._index(self.retailer.lines_for_day(self._indexed_through))

    def _index(self, lines: list[SimulatedLine]) -> None:
        for line in lines:
            self._by_po.setdefault(line.po_number, []).append(line)
            self._by_supplier_order.setdefault(line.supplier_order_id, []).append(line)

    def insert_late_lines(self, day: dt.date, count: int) -> None:
        """New orders arrive for `day` (ordered early that day), shifting every later page."""
        with self._index_lock:
            new = self.retailer.add_late_lines(day, count, self._fault_rng)
            if day <= self._indexed_through:
                self._index(new)

    # -- faults ------------------------------------------------------------------------------------
    def draw_fault(self) -> str | None:
        f = self.faults
        with self._lock:
            roll = self._fault_rng.random()
        for name, rate in (("rate_limited", f.rate_limited), ("server_error", f.server_error),
                           ("dropped", f.dropped), ("truncated", f.truncated), ("slow", f.slow)):
            if roll < rate:
                return name
            roll -= rate
        return None

    def draw_error_status(self) -> int:
        """The status of a server_error fault: 500, 502 or 503."""
        with self._lock:
            return self._fault_rng.choice((500, 502, 503))

    def draw_late_line_count(self) -> int:
        """How many late lines one paging-drift event inserts: 1 to 3."""
        with self._lock:
            return self._fault_rng.randint(1, 3)

    def draw_drift(self, day: dt.date) -> bool:
        """Whether late lines arrive for `day` now (at most paging_drift_events_per_day times)."""
        with self._lock:
            if self.drift_events[day] >= self.faults.paging_drift_events_per_day:
                return False
            if self._fault_rng.random() >= self.faults.paging_drift:
                return False
            self.drift_events[day] += 1
            return True

    def count(self, endpoint: str) -> None:
        with self._lock:
            self.requests[endpoint] += 1
            self.arrivals.append(time.monotonic())
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def answered(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _phone_number(order_status_id: str) -> str:
    return f"+1 555 {zlib.crc32(order_status_id.encode()) % 10_000_000:07d}"
