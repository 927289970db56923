"""Look-ups of a PO or supplier order the API does not know: "no lines", whether it answers 200-empty or a
JSON 404; every other 404 (by-date, bulk, HTML, a wrong base URL) stays a configuration error."""

import datetime as dt
import functools

import duckdb
import httpx
import pytest

from ordersync_pipeline import cli
from ordersync_pipeline.api.errors import OrderSyncConfigError
from ordersync_pipeline.api.client import OrderSyncClient
from ordersync_pipeline.definitions import build_definitions
from ordersync_pipeline.orchestration.resources import OrderSyncResource, OrderSyncWarehouse
from ordersync_pipeline.simulator.retailer import SimulatedRetailer
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW, duckdb_env

KEY = "pk_live_secret_do_not_print"
JSON_404 = httpx.Response(404, json={"error": "PO not found"})
HTML_404 = httpx.Response(404, headers={"Content-Type": "text/html"}, content=b"<html><h1>Not Found</h1></html>")
EMPTY_DAY = httpx.Response(200, json={"data": [], "meta": {"total": 0, "page": 1, "limit": 1, "has_more": False}})


def client_answering(answer_for, requests: list[httpx.Request]) -> OrderSyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer_for(request)
    return OrderSyncClient(KEY, "https://api.example.test", transport=httpx.MockTransport(handler))


def by_date_answers(request: httpx.Request) -> httpx.Response:
    return EMPTY_DAY if request.url.path.endswith("/by-date") else JSON_404


def test_a_json_404_from_a_look_up_is_no_lines_once_the_api_is_known_to_answer_there():
    requests: list[httpx.Request] = []
    with client_answering(by_date_answers, requests) as client:
        assert client.get_by_po("GONE1") == []
        assert client.get_by_supplier_order("GONE2") == []
    # One by-date request confirms the base URL, once per client.
    assert [r.url.path.rsplit("/", 1)[-1] for r in requests] == ["GONE1", "by-date", "GONE2"]
    assert requests[1].url.params["limit"] == "1"


@pytest.mark.parametrize("answer_for, call", [
    (lambda r: JSON_404, lambda c: c.get_by_po("GONE1")),  # by-date 404s too: the base URL is not the API
    (lambda r: JSON_404, lambda c: c.fetch_order_statuses_for_day(dt.date(2025, 12, 3))),
    (lambda r: JSON_404, lambda c: c.get_by_po_numbers(["AB1", "AB2"])),
    (lambda r: HTML_404, lambda c: c.get_by_po("GONE1")),
    (lambda r: HTML_404, lambda c: c.get_by_supplier_order("GONE1")),
], ids=["look-up-and-by-date-404", "by-date-404", "bulk-404", "html-404-by-po", "html-404-by-supplier-order"])
def test_other_404s_fail_at_once_naming_the_base_url(answer_for, call):
    requests: list[httpx.Request] = []
    with client_answering(answer_for, requests) as client:
        with pytest.raises(OrderSyncConfigError, match="ORDERSYNC_BASE_URL does not point at the Order Status API"):
            call(client)
    assert len(requests) <= 2  # no retries


def test_the_simulator_answers_an_unknown_po_either_way():
    with OrderSyncSimulator(not_found_style="404") as sim:
        answer = httpx.get(f"{sim.base_url}/api/v1/orders/by-po/NOPE", headers={"X-API-Key": SIMULATOR_API_KEY},
                           timeout=60)
        assert answer.status_code == 404 and "error" in answer.json()
    with OrderSyncSimulator() as sim:
        answer = httpx.get(f"{sim.base_url}/api/v1/orders/by-po/NOPE", headers={"X-API-Key": SIMULATOR_API_KEY},
                           timeout=60)
        assert answer.status_code == 200 and answer.json()["data"] == []
    with pytest.raises(ValueError, match="not_found_style must be one of empty, 404"):
        OrderSyncSimulator(not_found_style="410")


@pytest.mark.parametrize("style", ["empty", "404"])
def test_lookup_command_prints_no_lines_found_whatever_the_style(style, capsys, monkeypatch):
    monkeypatch.setattr(cli, "OrderSyncSimulator", functools.partial(OrderSyncSimulator, not_found_style=style))
    assert cli.main(["lookup", "po", "NO-SUCH-PO", "--simulator"]) == 0
    assert "No lines found for po 'NO-SUCH-PO'." in capsys.readouterr().out
    monkeypatch.undo()
    with OrderSyncSimulator(not_found_style=style) as sim:  # and live, as against the real API
        monkeypatch.setenv("ORDERSYNC_API_KEY", SIMULATOR_API_KEY)
        monkeypatch.setenv("ORDERSYNC_BASE_URL", sim.base_url)
        assert cli.main(["lookup", "supplier-order", "NO-SUCH-ORDER"]) == 0
        assert "No lines found for supplier-order 'NO-SUCH-ORDER'." in capsys.readouterr().out
        monkeypatch.setenv("ORDERSYNC_BASE_URL", f"{sim.base_url}/not-the-api")
        assert cli.main(["lookup", "po", "NO-SUCH-PO"]) == 2
    assert "ORDERSYNC_BASE_URL does not point at the Order Status API" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("style", ["empty", "404"])
def test_the_daily_refresh_survives_lines_the_api_no_longer_knows(style, tmp_path):
    database = str(tmp_path / "ordersync.duckdb")
    retailer = SimulatedRetailer(seed=11, orders_per_day=30)
    with OrderSyncSimulator(retailer, clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY,
                            not_found_style=style) as sim:
        defs = build_definitions({"ordersync": OrderSyncResource(api_key=SIMULATOR_API_KEY, base_url=sim.base_url),
                                  "warehouse": OrderSyncWarehouse(
                                      database=database, analyst_database=duckdb_env(database)["ORDERSYNC_DUCKDB_PATH"])})
        job = defs.resolve_job_def("daily_order_sync")
        run_config = {"ops": {"order_status_refresh": {"config": {"lookback_days": 1}}}}
        assert job.execute_in_process(partition_key="2025-12-06", run_config=run_config).success
        ids = ["gone-without-po", "gone-with-po"]
        # Two open lines the API no longer knows, one without a PO number, on a day never loaded (so the
        # blocking row-count check, which compares loaded days with the API, has nothing to say about them).
        with duckdb.connect(database) as conn:
            for line_id, po_number in zip(ids, [None, "GONE-PO"]):
                conn.execute("INSERT INTO order_statuses SELECT * REPLACE (? AS order_status_id, ? AS po_number, "
                             "'GONE-SO' AS supplier_order_id, 'processing' AS status, DATE '2025-11-01' AS order_day, "
                             "TIMESTAMPTZ '2025-11-01 10:00:00+00' AS order_date) FROM order_statuses LIMIT 1",
                             [line_id, po_number])
        gone = httpx.get(f"{sim.base_url}/api/v1/orders/by-supplier-order/GONE-SO", headers={"X-API-Key": SIMULATOR_API_KEY})
        assert gone.status_code == (404 if style == "404" else 200)
        looked_up_before = sim.requests["by-supplier-order"]
        assert job.execute_in_process(partition_key="2025-12-09", run_config=run_config).success
        assert sim.requests["by-supplier-order"] == looked_up_before + 1  # the PO-less line was looked up
    with duckdb.connect(database, read_only=True) as conn:
        log = conn.execute("SELECT supplier_orders_requested, po_numbers_requested FROM order_status_refreshes "
                           "ORDER BY refreshed_at DESC LIMIT 1").fetchall()[0]
        kept = conn.execute("SELECT status FROM order_statuses WHERE order_status_id IN (?, ?)", ids).fetchall()
    assert log[0] == 1 and log[1] >= 1
    assert kept == [("processing",), ("processing",)]  # not found: kept as last seen, the run goes on
