"""Connections to the API for many threads at once: one connection per request in flight, each lent to one
request at a time (client.py sends every request through `ConnectionLender.request`, with an absolute URL).

Why not one httpx client for every thread: its connection pool (httpcore) takes one lock per request and per
response, and on each it checks every idle connection's socket with a system call of its own (strace: 11 polls
per request with the 18 connections a range uses). With the 16 requests a range keeps in flight (then 4 days x 4
pages), a year's backfill (8,728 requests) spent 2.3-3.7 CPU-seconds more in the pipeline process, and its run took
~2 s longer, than with one client per connection (docs/benchmark.md). A lent connection checks only its own.

Each connection is an httpx transport, sent the request as httpx.Client would build it (the same headers, JSON
body, timeouts, and httpx's errors), without the client's per-request layers the API never needs: auth flows,
redirects (not followed either way), cookies (an API keyed by header sets none it needs), event hooks,
`response.elapsed` and httpx's INFO line per request: ~70 µs less CPU per page, 0.6 CPU-s a year. Proxies set in
the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, with NO_PROXY) are resolved per URL by httpx.Client, so with
any of them set each connection is such a client instead, exactly as before.

Plain httpx; knows nothing of the API's paging, retries or Dagster. Every connection shares one TLS context, made
as httpx makes its default one (SSL_CERT_FILE, SSL_CERT_DIR, else certifi): httpx builds one per client or
transport, ~20 ms and ~1 MB each.
"""

from __future__ import annotations

import threading
import urllib.request
from collections import deque
from typing import Any

import httpx


def environment_proxies() -> bool:
    """Whether the environment names a proxy httpx.Client would use (it reads the same urllib settings)."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


class ConnectionLender:
    """At most `max_connections` single-connection httpx transports (clients, when proxies are set), made on
    demand and each lent to one request at a time; a request that finds all of them lent waits for one, as long
    as httpx would wait for a free connection of its pool (`timeout.pool`), then fails with httpx.PoolTimeout, as
    httpx's pool does. `close` closes every connection, lent or not; the lender cannot be used after it.
    """

    def __init__(self, *, headers: dict[str, str], timeout: httpx.Timeout, max_connections: int):
        ssl_context = httpx.create_ssl_context()
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        # The headers an httpx.Client sends: its defaults (Accept-Encoding lists the decoders installed) merged with
        # ours, case-insensitively. A client over a transport that is never called makes no connection.
        never_called = httpx.MockTransport(lambda request: httpx.Response(500))
        with httpx.Client(headers=headers, transport=never_called) as client:
            self._headers = client.headers
        self._extensions = {"timeout": timeout.as_dict()}
        self._through_clients = environment_proxies()
        self._connection_options: dict[str, Any] = (
            dict(headers=headers, timeout=timeout, verify=ssl_context, limits=limits) if self._through_clients
            else dict(verify=ssl_context, limits=limits))
        self._pool_timeout = timeout.pool
        self._slots = threading.BoundedSemaphore(max_connections)  # one per connection lent or to be made
        # Connections not lent now. Only a thread holding a slot pops or appends, and there are never more of them
        # than slots, so a slot holder that finds this empty may make one without passing the limit.
        self._idle: deque[httpx.HTTPTransport | httpx.Client] = deque()
        self._made: list[httpx.HTTPTransport | httpx.Client] = []  # every connection made, for close()
        self._making = threading.Lock()  # taken only to make a connection (once per connection) and to close
        self._closed = False

    def request(self, method: str, url: str, *, json: Any = None) -> httpx.Response:
        """One request to an absolute URL (body read) on a connection no other thread is using."""
        if self._closed:
            raise RuntimeError("the OrderSync client is closed")
        if not self._slots.acquire(timeout=self._pool_timeout):
            raise httpx.PoolTimeout(f"all {len(self._made)} connections to the API stayed busy")
        try:
            try:
                connection = self._idle.pop()  # the most recently used: the likeliest to be alive
            except IndexError:
                connection = self._make()
            try:
                if isinstance(connection, httpx.Client):
                    return connection.request(method, url, json=json)
                return self._send(connection, method, url, json)
            finally:
                self._idle.append(connection)
        finally:
            self._slots.release()

    def _send(self, transport: httpx.HTTPTransport, method: str, url: str, json: Any) -> httpx.Response:
        """What httpx.Client.request does for the API's requests: build, send, read the body."""
        request = httpx.Request(method, url, headers=self._headers, json=json, extensions=self._extensions)
        try:
            response = transport.handle_request(request)
        except httpx.RequestError as error:
            error.request = request  # as httpx.Client does: the error says which request failed
            raise
        response.request = request
        try:
            response.read()  # closes the response's stream once read
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        with self._making:
            self._closed = True
        for connection in self._made:
            connection.close()

    def _make(self) -> httpx.HTTPTransport | httpx.Client:
        with self._making:  # not while close() runs: a connection made after it would stay open
            if self._closed:
                raise RuntimeError("the OrderSync client is closed")
            connection = (httpx.Client(**self._connection_options) if self._through_clients
                          else httpx.HTTPTransport(**self._connection_options))
            self._made.append(connection)
            return connection
