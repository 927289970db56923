"""Connections to the API for many threads at once: httpx clients of one connection each, each lent to one
request at a time (client.py sends every request through `ConnectionLender.request`).

Why not one httpx client for every thread: its connection pool (httpcore) takes one lock per request and per
response, and on each it checks every idle connection's socket with a system call of its own (strace: 11 polls
per request with the 18 connections a range uses). With the 16 pages a range keeps in flight (4 days x 4 pages),
a year's backfill (8,728 requests) spent 2.5-3.5 CPU-seconds more in the pipeline process, and its run took
~2 s longer, than with one client per connection (docs/benchmark.md). A lent client checks only its own.

Plain httpx; knows nothing of the API's paging, retries or Dagster. Every client shares one TLS context:
httpx builds one per client by default, ~20 ms and ~1 MB each.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import httpx


class ConnectionLender:
    """Single-connection httpx clients, made on demand and lent to one request at a time.

    Returned clients are kept for the next request, at most `keep` of them (the rest are closed), so a burst of
    requests never leaves more than `keep` idle connections open. `close` closes every client, lent or not.
    """

    def __init__(self, *, base_url: str, headers: dict[str, str], timeout: httpx.Timeout, keep: int,
                 transport: httpx.BaseTransport | None = None):
        self._settings: dict[str, Any] = dict(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=httpx.create_ssl_context(),
        )
        self._keep = keep
        self._idle: deque[httpx.Client] = deque()  # deque's append and pop are atomic: no lock needed
        self._made: list[httpx.Client] = []
        self._lock = threading.Lock()  # guards _made and _closed, taken only when a client is made or closed
        self._closed = False

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request (body read) on a connection no other thread is using."""
        try:
            client = self._idle.pop()  # the most recently used: its connection is the likeliest to be alive
        except IndexError:
            client = self._make()
        try:
            return client.request(method, url, **kwargs)
        finally:
            self._give_back(client)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            made, self._made = self._made, []
        self._idle.clear()
        for client in made:
            client.close()

    def _make(self) -> httpx.Client:
        with self._lock:
            if self._closed:
                raise RuntimeError("the OrderSync client is closed")
            client = httpx.Client(**self._settings)
            self._made.append(client)
            return client

    def _give_back(self, client: httpx.Client) -> None:
        if len(self._idle) < self._keep and not self._closed:
            self._idle.append(client)
            return
        with self._lock:
            if client in self._made:
                self._made.remove(client)
        client.close()
