"""ConnectionLender against a real HTTP server on 127.0.0.1: each request in flight on a connection of its own,
never more than max_connections at once, connections reused between requests, all of them closed by close()."""

import http.server
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ordersync_pipeline.api.connections import ConnectionLender

IN_FLIGHT = 4


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.barrier = threading.Barrier(IN_FLIGHT, timeout=10)
        self.ports_by_path: dict[str, list[int]] = {}
        self.closed_ports: set[int] = set()
        self.in_flight = self.most_in_flight = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []  # method, target, headers, body
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection carries many requests

    def do_GET(self):
        with self.server.lock:
            self.server.ports_by_path.setdefault(self.path, []).append(self.client_address[1])
            self.server.requests.append((self.command, self.path, dict(self.headers), self._body()))
        status = 200
        if self.path == "/hang":
            time.sleep(1)
        if self.path == "/slow":
            with self.server.lock:
                self.server.in_flight += 1
                self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
            time.sleep(0.05)
            with self.server.lock:
                self.server.in_flight -= 1
        if self.path == "/together":
            try:
                self.server.barrier.wait()  # answers only once IN_FLIGHT requests are being handled at once
            except threading.BrokenBarrierError:
                status = 503
        body = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def finish(self):
        super().finish()
        with self.server.lock:
            self.server.closed_ports.add(self.client_address[1])

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_proxy_in_the_environment(monkeypatch):
    """Lent connections are transports unless a proxy is set; the tests that need one set it themselves."""
    for scheme in ("http", "https", "all"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)


@pytest.fixture
def server():
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _lender(max_connections: int) -> ConnectionLender:
    return ConnectionLender(headers={"X-API-Key": "k"}, timeout=httpx.Timeout(20), max_connections=max_connections)


def _url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_port}{path}"


def test_requests_in_flight_each_get_a_connection_reused_later_and_closed_by_close(server):
    lender = _lender(max_connections=IN_FLIGHT)
    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            statuses = list(pool.map(lambda _: lender.request("GET", _url(server, "/together")).status_code,
                                     range(IN_FLIGHT)))
        # Sharing connections would serialise the requests and break the server's barrier (503 after 10 s).
        assert statuses == [200] * IN_FLIGHT
        together = set(server.ports_by_path["/together"])
        assert len(together) == IN_FLIGHT

        for _ in range(5):
            assert lender.request("GET", _url(server, "/one-at-a-time")).status_code == 200
        # One after another: one kept connection carries them all, no new connection per request.
        one_at_a_time = set(server.ports_by_path["/one-at-a-time"])
        assert len(one_at_a_time) == 1 and one_at_a_time <= together
        assert not together & server.closed_ports  # all kept open until close()
    finally:
        lender.close()
    deadline = time.monotonic() + 10
    while not together <= server.closed_ports and time.monotonic() < deadline:
        time.sleep(0.05)
    assert together <= server.closed_ports
    with pytest.raises(RuntimeError, match="OrderSync client is closed"):
        lender.request("GET", _url(server, "/after-close"))


def test_never_more_connections_than_max_connections(server):
    lender = _lender(max_connections=2)
    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            statuses = list(pool.map(lambda _: lender.request("GET", _url(server, "/slow")).status_code,
                                     range(3 * IN_FLIGHT)))
    finally:
        lender.close()
    assert statuses == [200] * (3 * IN_FLIGHT)
    # Four threads asked at once; the others waited for one of the two connections, as httpx's own pool does.
    assert server.most_in_flight == 2
    assert len(set(server.ports_by_path["/slow"])) == 2


@pytest.mark.parametrize("method, body", [("GET", None), ("POST", {"po_numbers": ["PO-1", "PÖ 2"]})])
def test_a_lent_connection_sends_what_an_httpx_client_sends(server, method, body):
    """The lender sends requests itself (not through httpx.Client): the same headers, target and JSON body."""
    headers = {"X-API-Key": "k", "Accept": "application/json"}
    lender = ConnectionLender(headers=headers, timeout=httpx.Timeout(20), max_connections=1)
    try:
        response = lender.request(method, _url(server, "/same?page=2"), json=body)
    finally:
        lender.close()
    with httpx.Client(headers=headers) as client:
        client.request(method, _url(server, "/same?page=2"), json=body)
    (lent, by_client) = [(m, path, {k.lower(): v for k, v in sent.items()}, content)
                         for m, path, sent, content in server.requests]
    assert lent == by_client
    assert response.status_code == 200 and response.json() == {} and response.request.method == method


def test_a_lent_connection_raises_httpx_errors(server):
    """The client retries on httpx's transport errors: a lent connection raises the same ones."""
    lender = ConnectionLender(headers={}, timeout=httpx.Timeout(0.2), max_connections=1)
    try:
        with pytest.raises(httpx.ReadTimeout) as timed_out:
            lender.request("GET", _url(server, "/hang"))
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]  # nothing listens on it
        with pytest.raises(httpx.ConnectError) as refused:
            lender.request("GET", f"http://127.0.0.1:{port}/")
        # As from httpx.Client, the error names the request that failed.
        assert timed_out.value.request.url == _url(server, "/hang")
        assert refused.value.request.url == f"http://127.0.0.1:{port}/"
    finally:
        lender.close()


def test_a_proxy_in_the_environment_is_used_as_httpx_would(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    lender = ConnectionLender(headers={"X-API-Key": "k"}, timeout=httpx.Timeout(20), max_connections=1)
    try:
        assert lender.request("GET", "http://localhost:9/api/v1/orders/by-date?page=1").status_code == 200
    finally:
        lender.close()
    # The proxy got the whole URL (absolute form), as a proxy does; nothing listens on localhost:9.
    assert [path for _, path, _, _ in server.requests] == ["http://localhost:9/api/v1/orders/by-date?page=1"]
