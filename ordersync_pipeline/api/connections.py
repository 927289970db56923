"""Connections to the API for many threads at once: httpx clients of one connection each, each lent to one
request at a time (client.py sends every request through `ConnectionLender.request`).

Why not one httpx client for every thread: its connection pool (httpcore) takes one lock per request and per
response, and on each it checks every idle connection's socket with a system call of its own (strace: 11 polls
per request with the 18 connections a range uses). With the 16 requests a range keeps in flight (then 4 days x 4
pages), a year's backfill (8,728 requests) spent 2.3-3.7 CPU-seconds more in the pipeline process, and its run took
~2 s longer, than with one client per connection (docs/benchmark.md). A lent client checks only its own.

Plain httpx; knows nothing of the API's paging, retries or Dagster. Every client shares one TLS context, made as
httpx makes its default one (SSL_CERT_FILE, SSL_CERT_DIR, else certifi): httpx builds one per client, ~20 ms and
~1 MB each.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import httpx


class ConnectionLender:
    """At most `max_connections` single-connection httpx clients, made on demand and each lent to one request
    at a time; a request that finds all of them lent waits for one, as long as httpx would wait for a free
    connection of its pool (`timeout.pool`), then fails with httpx.PoolTimeout, as httpx's pool does.
    `close` closes every client, lent or not; the lender cannot be used after it.
    """

    def __init__(self, *, base_url: str, headers: dict[str, str], timeout: httpx.Timeout, max_connections: int):
        self._client_options: dict[str, Any] = dict(
            base_url=base_url, headers=headers, timeout=timeout, verify=httpx.create_ssl_context(),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self._pool_timeout = timeout.pool
        self._slots = threading.BoundedSemaphore(max_connections)  # one per client lent or to be made
        # Clients not lent now. Only a thread holding a slot pops or appends, and there are never more clients
        # than slots, so a slot holder that finds this empty may make a client without passing the limit.
        self._idle: deque[httpx.Client] = deque()
        self._made: list[httpx.Client] = []  # every client made, for close()
        self._making = threading.Lock()  # taken only to make a client (once per connection) and to close
        self._closed = False

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request (body read) on a connection no other thread is using."""
        if self._closed:
            raise RuntimeError("the OrderSync client is closed")
        if not self._slots.acquire(timeout=self._pool_timeout):
            raise httpx.PoolTimeout(f"all {len(self._made)} connections to the API stayed busy")
        try:
            try:
                client = self._idle.pop()  # the most recently used: its connection is the likeliest to be alive
            except IndexError:
                client = self._make()
            try:
                return client.request(method, url, **kwargs)
            finally:
                self._idle.append(client)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._making:
            self._closed = True
        for client in self._made:
            client.close()

    def _make(self) -> httpx.Client:
        with self._making:  # not while close() runs: a client made after it would stay open
            if self._closed:
                raise RuntimeError("the OrderSync client is closed")
            client = httpx.Client(**self._client_options)
            self._made.append(client)
            return client
