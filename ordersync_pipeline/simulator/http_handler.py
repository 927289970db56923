"""The simulator's HTTP side: routing the four endpoints, checking their parameters, the `{data, meta}`
envelope and JSON errors, and the faults a hostile API shows on the wire (latency, drops, 429/5xx,
truncated bodies, echoed headers). What the answers contain is decided in server.py.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

_MAX_LIMIT = 100
_MAX_PO_NUMBERS = 100


class SimulatedApi(Protocol):
    """What the handler asks of the simulator (server.OrderSyncSimulator is one; it imports this module, so
    this module names what it needs instead of importing it back)."""

    api_key: str
    clock: Any  # .now() -> the simulator's UTC datetime
    faults: Any  # server.Faults
    not_found_style: str
    retailers_by_key: dict[str, SimulatedApi]
    encoded_pages: dict[tuple[str, str, dt.datetime], bytes] | None

    def count(self, endpoint: str) -> None: ...
    def answered(self) -> None: ...
    def draw_fault(self) -> str | None: ...
    def draw_error_status(self) -> int: ...
    def draw_drift(self, day: dt.date) -> bool: ...
    def draw_late_line_count(self) -> int: ...
    def insert_late_lines(self, day: dt.date, count: int) -> None: ...
    def served_page(self, first: dt.date, last: dt.date, offset: int, limit: int) -> tuple[list[dict], int]: ...
    def records_for_po(self, po_number: str) -> list[dict]: ...
    def records_for_supplier_order(self, supplier_order_id: str) -> list[dict]: ...


def _envelope(records: list[dict], *, page: int = 1, limit: int | None = None, total: int | None = None) -> dict:
    total = len(records) if total is None else total
    limit = limit if limit is not None else max(1, len(records))
    return {"data": records, "meta": {"total": total, "page": page, "limit": limit, "has_more": page * limit < total}}


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _parse_date(value: str | None, name: str) -> dt.date:
    if not value:
        raise _ApiError(400, f"{name} is required (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _ApiError(400, f"{name} must be a date in YYYY-MM-DD form, got {value!r}") from None


def _parse_int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise _ApiError(400, f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise _ApiError(400, f"{name} must be between {low} and {high}, got {number}")
    return number


def make_handler(sim: SimulatedApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real API behind a load balancer
        disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms ACK stalls

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass  # quiet: tests and the demo print their own progress

        def date_time_string(self, timestamp: float | None = None) -> str:
            # The `Date` header tells the simulator's time, as a real API's tells its clock: clients take
            # it as the moment the statuses they got were observed, so tests with a fixed clock are exact.
            return email.utils.formatdate(sim.clock.now().timestamp(), usegmt=True)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
            url = urllib.parse.urlsplit(self.path)
            sim.count(self._endpoint_name(method, url.path))
            try:
                self._answer(method, url, body)
            finally:
                sim.answered()

        def _answer(self, method: str, url: urllib.parse.SplitResult, body: bytes) -> None:
            if sim.faults.latency_seconds:
                time.sleep(sim.faults.latency_seconds)
            fault = sim.draw_fault()
            if fault == "dropped":
                self.close_connection = True
                return
            if fault == "rate_limited":
                return self._send_error(429, "rate limit exceeded", {"Retry-After": f"{sim.faults.retry_after_seconds:g}"})
            if fault == "server_error":
                return self._send_error(sim.draw_error_status(), "upstream unavailable")
            if fault == "slow":
                time.sleep(sim.faults.slow_seconds)
            feed = sim.retailers_by_key.get(self.headers.get("X-API-Key") or "")
            if feed is None:
                return self._send_error(401, "Invalid or missing API key")
            pages = sim.encoded_pages
            page_key = (feed.api_key, url.query, sim.clock.now())  # each key its own retailer's pages
            if pages is not None and method == "GET" and url.path == "/api/v1/orders/by-date" and page_key in pages:
                return self._send(200, pages[page_key], truncate=fault == "truncated")
            try:
                payload = self._route(feed, method, url.path, urllib.parse.parse_qs(url.query), body)
            except _ApiError as exc:
                return self._send_error(exc.status, str(exc))
            if pages is not None and method == "GET" and url.path == "/api/v1/orders/by-date":
                payload = pages.setdefault(page_key, json.dumps(payload).encode())
            self._send(200, payload, truncate=fault == "truncated")

        @staticmethod
        def _endpoint_name(method: str, path: str) -> str:
            for prefix, name in (("/api/v1/orders/by-date", "by-date"), ("/api/v1/orders/by-po-numbers", "by-po-numbers"),
                                 ("/api/v1/orders/by-po/", "by-po"), ("/api/v1/orders/by-supplier-order/", "by-supplier-order")):
                if path.startswith(prefix):
                    return name
            return "unknown"

        def _route(self, feed: SimulatedApi, method: str, path: str, query: dict[str, list[str]],
                   body: bytes) -> dict:
            one = {key: values[0] for key, values in query.items()}
            if method == "GET" and path == "/api/v1/orders/by-date":
                return self._by_date(feed, one)
            if method == "POST" and path == "/api/v1/orders/by-po-numbers":
                return self._by_po_numbers(feed, body)
            for prefix, lookup in (("/api/v1/orders/by-po/", feed.records_for_po),
                                   ("/api/v1/orders/by-supplier-order/", feed.records_for_supplier_order)):
                if method == "GET" and path.startswith(prefix) and len(path) > len(prefix):
                    value = urllib.parse.unquote(path[len(prefix):])
                    records = lookup(value)
                    if not records and sim.not_found_style == "404":
                        raise _ApiError(404, f"no order lines found for {value!r}")
                    return _envelope(records)
            raise _ApiError(404, f"no such endpoint: {method} {path}")

        def _by_date(self, feed: SimulatedApi, query: dict[str, str]) -> dict:
            start = _parse_date(query.get("start_date"), "start_date")
            end = _parse_date(query["end_date"], "end_date") if "end_date" in query else start
            if end < start:
                raise _ApiError(400, "end_date must not be before start_date")
            page = _parse_int(query.get("page"), "page", 1, 1, 10**9)
            limit = _parse_int(query.get("limit"), "limit", 50, 1, _MAX_LIMIT)
            if page > 1 and sim.faults.paging_drift and feed.draw_drift(start):
                feed.insert_late_lines(start, sim.draw_late_line_count())
            records, total = feed.served_page(start, end, (page - 1) * limit, limit)
            return _envelope(records, page=page, limit=limit, total=total + sim.faults.total_offset)

        def _by_po_numbers(self, feed: SimulatedApi, body: bytes) -> dict:
            try:
                po_numbers = json.loads(body)["po_numbers"]
            except (ValueError, KeyError, TypeError):
                raise _ApiError(400, 'body must be JSON {"po_numbers": ["PO1", ...]}') from None
            if not isinstance(po_numbers, list) or not all(isinstance(p, str) for p in po_numbers):
                raise _ApiError(400, "po_numbers must be a list of strings")
            if len(po_numbers) > _MAX_PO_NUMBERS:
                raise _ApiError(400, f"at most {_MAX_PO_NUMBERS} po_numbers per request, got {len(po_numbers)}")
            return _envelope([r for po in dict.fromkeys(po_numbers) for r in feed.records_for_po(po)])

        def _send_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            echo = sim.faults.echo_request_headers
            if echo == "text":
                request_headers = "".join(f"{name}: {value}\n" for name, value in self.headers.items())
                return self._send(status, f"{message}\n{request_headers}", headers, content_type="text/plain")
            if echo == "json":
                return self._send(status, {"error": {"message": message, "request_headers": dict(self.headers.items())}},
                                  headers)
            self._send(status, {"error": message}, headers)

        def _send(self, status: int, payload: dict | str | bytes, headers: dict[str, str] | None = None,
                  truncate: bool = False, content_type: str = "application/json") -> None:
            if isinstance(payload, bytes):
                data = payload
            else:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if truncate:
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            self.wfile.write(data)

    return Handler
