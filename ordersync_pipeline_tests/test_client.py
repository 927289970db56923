"""OrderSyncClient against httpx mock transports: paging, encoding, batching, errors, retries."""

import datetime as dt
import json
import threading
import time

import httpx
import pytest

from ordersync_pipeline.api.errors import (
    OrderSyncAuthError,
    OrderSyncConfigError,
    OrderSyncError,
    OrderSyncPagingError,
    OrderSyncRequestError,
    OrderSyncUnavailableError,
)
from ordersync_pipeline.api.client import OrderSyncClient

KEY = "pk_live_secret_do_not_print"
DAY = dt.date(2025, 12, 5)


def record(n: int, **fields) -> dict:
    return {"order_status_id": f"line{n:05d}", "order_date": f"2025-12-05T10:00:{n % 60:02d}+00:00", **fields}


def envelope(records, total, page, limit):
    return {"data": records, "meta": {"total": total, "page": page, "limit": limit, "has_more": page * limit < total}}


def paged_api(records: list[dict], requests: list[httpx.Request]):
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        assert request.headers["X-API-Key"] == KEY
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        chunk = records[(page - 1) * limit : page * limit]
        return httpx.Response(200, json=envelope(chunk, len(records), page, limit))
    return handler


def make_client(handler, **options) -> OrderSyncClient:
    sleeps = options.pop("sleeps", [])
    return OrderSyncClient(KEY, "https://api.example.test", transport=httpx.MockTransport(handler),
                           sleep=sleeps.append, **options)


@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_by_date_reads_every_page_with_the_maximum_limit(concurrency):
    records = [record(n) for n in range(250)]
    requests: list[httpx.Request] = []
    with make_client(paged_api(records, requests), max_concurrent_pages=concurrency) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    assert [r["order_status_id"] for r in fetch.records] == [r["order_status_id"] for r in records]
    assert fetch.api_total == 250 and fetch.pages_fetched == 3 and fetch.passes == 1 and fetch.consistent
    assert sorted(int(r.url.params["page"]) for r in requests) == [1, 2, 3]
    for request in requests:
        assert request.url.path == "/api/v1/orders/by-date"
        assert request.url.params["start_date"] == request.url.params["end_date"] == "2025-12-05"
        assert request.url.params["limit"] == "100"


@pytest.mark.parametrize("concurrency", [2, 3])
@pytest.mark.parametrize("failing_thread", ["the day's own", "a helper"])
def test_a_page_that_fails_stops_its_day_and_its_error_is_raised(concurrency, failing_thread):
    """A page of 10 is refused, read by the day's own thread or by a helper: the day fails with that error, and
    the pages not yet taken are not requested (they would be wasted on a key the API refuses)."""
    records = [record(n) for n in range(1000)]
    requests: list[httpx.Request] = []
    serve = paged_api(records, requests)
    refused: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        helper = threading.current_thread().name.startswith("ordersync-page")
        if page > 1 and not refused and helper == (failing_thread == "a helper"):
            refused.append(page)
            requests.append(request)
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "key revoked"}})
        if page > 1:
            time.sleep(0.02)  # the refusal reaches the other threads before they could take every page
        return serve(request)

    with make_client(handler, max_concurrent_pages=concurrency) as client, pytest.raises(OrderSyncAuthError):
        client.fetch_order_statuses_for_day(DAY)
    assert refused and len(requests) < 10


def test_an_empty_day_is_one_request():
    requests: list[httpx.Request] = []
    with make_client(paged_api([], requests)) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    assert fetch.records == [] and fetch.api_total == 0 and len(requests) == 1


def test_paging_drift_is_detected_and_recovered_by_reading_the_day_again():
    """Three new lines arrive after page 1 was read: page 2 repeats lines and one line is never returned
    in that pass. The client must notice (count != total) and merge a second pass."""
    day = [record(n) for n in range(150)]
    late = [record(900 + n, order_date="2025-12-05T00:00:0%d+00:00" % n) for n in range(3)]
    state = {"arrived": False}

    def handler(request):
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        if page == 2:
            state["arrived"] = True
        current = (late + day) if state["arrived"] else day  # late lines sort first: everything shifts
        return httpx.Response(200, json=envelope(current[(page - 1) * limit : page * limit], len(current), page, limit))

    with make_client(handler, max_concurrent_pages=1) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    ids = [r["order_status_id"] for r in fetch.records]
    assert len(ids) == len(set(ids)) == 153
    assert set(ids) == {r["order_status_id"] for r in late + day}
    assert fetch.passes == 2 and fetch.duplicates_seen == 3 and fetch.consistent


def test_a_day_read_again_keeps_each_line_once_in_first_seen_order_with_its_latest_copy():
    """Records stay undecoded until the day is read; what comes out must be what merging each record as it was
    read gave: first-seen order, the latest copy of a line (a repeat later in the same pass included, and a
    line only an earlier pass returned), and the id-less records of the last pass at the end."""
    only_in_first = record(500, status="placed")
    first = [record(n, status="placed") for n in range(150)]
    first[50:50] = [only_in_first, {"order_date": "2025-12-05T10:00:00+00:00", "status": "first pass"}]
    second = [record(n, status="shipped" if n % 2 else "placed") for n in reversed(range(150))]
    second.append(record(99, status="returned"))  # read last: this copy of line 99 wins
    id_less = {"order_date": "2025-12-05T10:00:00+00:00", "status": "second pass"}
    second.insert(10, id_less)
    page_1_reads = []  # a pass starts with page 1

    def handler(request):
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        if page == 1:
            page_1_reads.append(page)
        # Pass 1 is short of its total; pass 2 lacks line 500, which pass 1 returned: together they are complete.
        current, total = (first, 153) if len(page_1_reads) == 1 else (second, 152)
        return httpx.Response(200, json=envelope(current[(page - 1) * limit : page * limit], total, page, limit))

    with make_client(handler, max_concurrent_pages=1) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    expected = [record(n, status="returned" if n == 99 else "shipped" if n % 2 else "placed") for n in range(150)]
    expected.insert(50, only_in_first)
    assert fetch.records == [*expected, id_less]
    assert fetch.passes == 2 and fetch.duplicates_seen == 1 and fetch.consistent


@pytest.mark.parametrize("shape", ["an id-less record", "a repeated line"])
def test_a_complete_first_pass_with_an_id_less_record_or_a_repeat_is_merged_too(shape):
    records = [record(n, status="placed") for n in range(150)]
    if shape == "an id-less record":
        odd = {"order_date": "2025-12-05T10:00:00+00:00", "status": "no id"}
        records.insert(20, odd)
        expected = [*records[:20], *records[21:], odd]  # id-less records come last, as before
    else:
        records.insert(120, record(3, status="shipped"))  # the later copy wins, in the first copy's place
        expected = [record(3, status="shipped") if n == 3 else record(n, status="placed") for n in range(150)]
    total = len(expected)  # the API counts lines: a repeat is not one more

    def handler(request):
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        chunk = records[(page - 1) * limit : page * limit]
        return httpx.Response(200, json={"data": chunk, "meta": {"total": total, "page": page, "limit": limit,
                                                                 "has_more": page * limit < len(records)}})

    with make_client(handler, max_concurrent_pages=1) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    assert fetch.passes == 1 and fetch.consistent and fetch.records == expected


def test_an_api_whose_total_is_always_wrong_is_flagged_not_looped_on():
    records = [record(n) for n in range(5)]

    def handler(request):
        return httpx.Response(200, json={"data": records, "meta": {"total": 6, "page": 1, "limit": 100, "has_more": False}})

    with make_client(handler) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    assert len(fetch.records) == 5 and fetch.api_total == 6 and not fetch.consistent and fetch.passes == 2


def test_drift_that_never_settles_gives_up_after_the_maximum_passes_with_a_clear_error():
    """New lines keep arriving for the day while it is read: every pass sees a different day."""
    arrived: list[dict] = []
    passes = []

    def handler(request):
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        if page == 1:
            passes.append(page)
        else:  # a late order sorts first and shifts every page after it
            arrived.insert(0, record(900 + len(arrived), order_date="2025-12-05T00:00:00+00:00"))
        current = arrived + [record(n) for n in range(150)]
        return httpx.Response(200, json=envelope(current[(page - 1) * limit : page * limit], len(current), page, limit))

    with make_client(handler, max_paging_passes=4) as client:
        with pytest.raises(OrderSyncPagingError) as error:
            client.fetch_order_statuses_for_day(DAY)
    assert len(passes) == 4
    message = str(error.value)
    assert "2025-12-05" in message and "after 4 passes" in message and "Nothing was stored" in message


@pytest.mark.parametrize("answer", [httpx.Response(403, json={"error": "key not allowed to read orders"}),
                                    httpx.Response(404, json={"error": "Not found"})])
def test_403_and_404_from_by_date_fail_at_once_without_retrying(answer):
    calls = []

    def handler(request):
        calls.append(request)
        return answer

    with make_client(handler) as client:
        with pytest.raises(OrderSyncError) as error:
            client.fetch_order_statuses_for_day(DAY)
    assert len(calls) == 1 and client.counter.requests == 1 and client.counter.retries == 0
    assert not isinstance(error.value, OrderSyncUnavailableError)
    assert f"HTTP {answer.status_code}" in str(error.value) and KEY not in str(error.value)
    assert calls[0].url.path == "/api/v1/orders/by-date"


@pytest.mark.parametrize("value", ["PO/12#3", "50% off?", "Büro 7", "a b&c=d", "../etc"])
def test_path_parameters_are_url_encoded(value):
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=envelope([record(1, po_number=value)], 1, 1, 1))

    with make_client(handler) as client:
        assert client.get_by_po(value)[0]["po_number"] == value
        client.get_by_supplier_order(value)
    prefixes = ["/api/v1/orders/by-po/", "/api/v1/orders/by-supplier-order/"]
    for request, prefix in zip(seen, prefixes):
        raw = request.url.raw_path.decode()
        segment = raw[len(prefix):]
        assert raw.startswith(prefix) and "/" not in segment and "?" not in segment and "#" not in segment
        assert httpx.URL(raw).path == prefix + value  # decodes back to exactly the value


def test_bulk_po_lookup_sends_at_most_100_distinct_numbers_per_request():
    bodies: list[list[str]] = []

    def handler(request):
        assert request.method == "POST" and request.url.path == "/api/v1/orders/by-po-numbers"
        numbers = json.loads(request.content)["po_numbers"]
        bodies.append(numbers)
        return httpx.Response(200, json=envelope([record(i, po_number=p) for i, p in enumerate(numbers)], len(numbers), 1, 100))

    po_numbers = [f"PO{n}" for n in range(250)] + ["PO1", "PO2"]  # duplicates are asked once
    with make_client(handler) as client:
        records = client.get_by_po_numbers(po_numbers)
    assert [len(b) for b in bodies] == [100, 100, 50]
    assert [p for b in bodies for p in b] == [f"PO{n}" for n in range(250)]
    assert len(records) == 250


def test_a_bad_key_is_a_clear_authentication_error_without_the_key():
    with make_client(lambda r: httpx.Response(401, json={"error": "Invalid API key"})) as client:
        with pytest.raises(OrderSyncAuthError) as error:
            client.get_by_po("AB1")
    message = str(error.value)
    assert "Invalid API key" in message and "ORDERSYNC_API_KEY" in message and KEY not in message


def test_other_4xx_fail_at_once_with_the_server_message():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(400, json={"error": "start_date must be YYYY-MM-DD"})

    with make_client(handler) as client:
        with pytest.raises(OrderSyncRequestError) as error:
            client.fetch_order_statuses_for_day(DAY)
    assert "HTTP 400" in str(error.value) and "start_date must be YYYY-MM-DD" in str(error.value)
    assert error.value.status_code == 400 and len(calls) == 1


def test_429_and_5xx_are_retried_with_backoff_honouring_retry_after():
    answers = [httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"}),
               httpx.Response(503), httpx.Response(200, content=b'{"data": [, truncated'),
               httpx.Response(200, json=envelope([record(1)], 1, 1, 100))]
    sleeps: list[float] = []
    with make_client(lambda r: answers.pop(0), sleeps=sleeps) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    assert len(fetch.records) == 1
    assert len(sleeps) == 3 and sleeps[0] >= 7  # Retry-After is a floor
    assert client.counter.requests == 4 and client.counter.retries == 3


@pytest.mark.parametrize("endpoint", ["by-date", "by-po"])
def test_a_body_with_bad_utf8_in_any_field_is_retried_then_a_clear_error(endpoint):
    """Latin-1 text in a field other than the id: arrival checks must refuse it there, where it is retried, not
    when the records are decoded later."""
    bad = b'{"data": [{"order_status_id": "line1", "item": "caf\xe9"}], "meta": {"total": 1, "page": 1, "limit": 100}}'
    with make_client(lambda request: httpx.Response(200, content=bad), max_attempts=3) as client:
        with pytest.raises(OrderSyncUnavailableError, match="after 3 attempts .*not valid JSON"):
            if endpoint == "by-date":
                client.fetch_order_statuses_for_day(DAY)
            else:
                client.get_by_po("PO-1")
    assert client.counter.requests == 3


def test_dropped_connections_are_retried():
    answers = [httpx.RemoteProtocolError("Server disconnected without sending a response."),
               httpx.ReadTimeout("timed out"), httpx.Response(200, json=envelope([], 0, 1, 100))]

    def handler(request):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with make_client(handler) as client:
        assert client.fetch_order_statuses_for_day(DAY).records == []


def test_retries_are_bounded_and_end_in_a_clear_error():
    with make_client(lambda r: httpx.Response(502), max_attempts=3) as client:
        with pytest.raises(OrderSyncUnavailableError) as error:
            client.get_by_po("AB1")
    assert "after 3 attempts" in str(error.value) and "HTTP 502" in str(error.value)
    assert KEY not in str(error.value)


@pytest.mark.parametrize("url", ["http://api.withordersync.com", "ftp://x", "not a url", "http://10.0.0.5:8000"])
def test_plain_http_or_odd_urls_are_refused(url):
    with pytest.raises(OrderSyncConfigError):
        OrderSyncClient(KEY, url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:80", "https://api.withordersync.com"])
def test_https_and_loopback_are_accepted(url):
    OrderSyncClient(KEY, url).close()


def test_an_empty_key_is_refused_with_what_to_do():
    with pytest.raises(OrderSyncConfigError, match="ORDERSYNC_API_KEY"):
        OrderSyncClient("  ", "https://api.withordersync.com")


def test_a_long_retry_after_is_honoured_in_full():
    answers = [httpx.Response(429, headers={"Retry-After": "45"}), httpx.Response(200, json=envelope([], 0, 1, 100))]
    sleeps: list[float] = []
    with make_client(lambda r: answers.pop(0), sleeps=sleeps) as client:
        client.get_by_po("AB1")
    assert sleeps and sleeps[0] >= 45  # not cut to the 30 s backoff maximum


def test_a_retry_after_beyond_the_request_budget_fails_at_once():
    sleeps: list[float] = []
    with make_client(lambda r: httpx.Response(429, headers={"Retry-After": "600"}), sleeps=sleeps,
                     request_budget_seconds=120) as client:
        with pytest.raises(OrderSyncUnavailableError, match="HTTP 429"):
            client.get_by_po("AB1")
    assert sleeps == []  # no 600 s wait that would end past the budget


def test_a_key_with_a_trailing_newline_is_used_stripped():
    seen = []

    def handler(request):
        seen.append(request.headers["X-API-Key"])
        return httpx.Response(200, json=envelope([], 0, 1, 100))

    with OrderSyncClient(KEY + "\n", "https://api.example.test", transport=httpx.MockTransport(handler)) as client:
        client.get_by_po("AB1")
    assert seen == [KEY]


@pytest.mark.parametrize("bad_key", ["pk_live_…", "pk_live abc", "pk_live_\x00x"])
def test_a_key_that_cannot_be_a_header_is_refused_without_echoing_it(bad_key):
    with pytest.raises(OrderSyncConfigError) as error:
        OrderSyncClient(bad_key, "https://api.example.test")
    assert "ORDERSYNC_API_KEY" in str(error.value) and bad_key not in str(error.value)


@pytest.mark.parametrize("response, expected", [
    (httpx.Response(301, headers={"Location": "https://elsewhere.test/"}), "redirect"),
    (httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html>login</html>"), "not JSON"),
])
def test_a_wrong_base_url_fails_at_once_with_what_to_check(response, expected):
    calls = []

    def handler(request):
        calls.append(request)
        return response

    with make_client(handler) as client:
        with pytest.raises(OrderSyncConfigError, match=expected) as error:
            client.get_by_po("AB1")
    assert "ORDERSYNC_BASE_URL" in str(error.value) and len(calls) == 1


def test_pages_are_counted_with_the_limit_the_server_applied():
    records = [record(n) for n in range(120)]

    def handler(request):  # the server caps limit at 50 whatever we ask
        page = int(request.url.params["page"])
        return httpx.Response(200, json=envelope(records[(page - 1) * 50 : page * 50], 120, page, 50))

    with make_client(handler) as client:
        fetch = client.fetch_order_statuses_for_day(DAY)
    assert len(fetch.records) == 120 and fetch.pages_fetched == 3 and fetch.consistent


def echoing_api(status: int, style: str):
    """A server (or proxy) whose error bodies quote the request headers, the key among them."""
    def handler(request: httpx.Request) -> httpx.Response:
        headers = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
        if style == "text":
            return httpx.Response(status, text=f"Bad request\n{headers}\nX-Api-Key:  {request.headers['X-API-Key']}")
        return httpx.Response(status, json={"error": f"bad request, headers were: {headers}"})
    return handler


@pytest.mark.parametrize("style", ["json", "text"])
@pytest.mark.parametrize("status, error_type", [(400, OrderSyncRequestError), (401, OrderSyncAuthError),
                                                (500, OrderSyncUnavailableError)])
def test_a_key_echoed_in_an_error_body_is_redacted_from_the_error(status, error_type, style):
    with make_client(echoing_api(status, style), max_attempts=2) as client:
        with pytest.raises(error_type) as error:
            client.get_by_po("AB1")
    message = str(error.value)
    assert f"HTTP {status}" in message and "[redacted]" in message  # the server's text is there, the key is not
    assert KEY not in message and KEY[:12] not in message
    assert KEY not in getattr(error.value, "server_message", "")


def test_redact_key_removes_the_key_and_any_api_key_header_value():
    from ordersync_pipeline.api.errors import redact_key

    text = f'{KEY} x-api-key: pk_other {{"X-API-Key": "pk_third"}} X_API_KEY=pk_fourth; kept'
    redacted = redact_key(text, KEY)
    assert "pk_" not in redacted and redacted.endswith("; kept")
