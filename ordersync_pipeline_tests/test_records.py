"""Native page decoding (records.py) changes nothing but speed: every page normalises exactly as Python's json
module's reading of it did, rejects' reasons and raw JSON, extras and personal-data modes included."""

import datetime as dt
import json

import httpx
import pytest

from ordersync_pipeline.normalise import PII_MODES, normalise_order_statuses
from ordersync_pipeline.api.records import RegularRecord, decode_body, decode_ids, record_id
from ordersync_pipeline.simulator.server import SIMULATOR_API_KEY, Faults, OrderSyncSimulator, SimulatedClock
from ordersync_pipeline_tests.support import SIM_FIRST_DAY, SIM_NOW
from ordersync_pipeline_tests.lines import FETCHED, REFERENCE_RECORD

DAY = dt.date(2025, 12, 3)
REGULAR_PAGE = [
    REFERENCE_RECORD,
    {**REFERENCE_RECORD, "order_status_id": "second", "tracking_number": None, "delivery_date": None},
    {**REFERENCE_RECORD, "order_status_id": "bad-date", "order_date": "31/12/2025 9:00"},
    {**REFERENCE_RECORD, "order_status_id": "wrong-day", "order_date": "2025-12-05T10:00:00+00:00"},
    {**REFERENCE_RECORD, "order_status_id": None},
    {**REFERENCE_RECORD, "order_status_id": ""},
    {**REFERENCE_RECORD, "order_status_id": "bad-delivery", "delivery_date": "soon"},
    {**REFERENCE_RECORD, "customer": "Ann Other", "status": "shipped"},  # a second copy: the last one is kept
]
IRREGULAR_RECORDS = [
    {**REFERENCE_RECORD, "order_status_id": "number", "po_number": 12345, "tracking_number": 1.5},
    {**REFERENCE_RECORD, "order_status_id": "object", "item": {"name": "Cobra"}},
    {**REFERENCE_RECORD, "order_status_id": "array", "customer": ["Tom"]},
    {**REFERENCE_RECORD, "order_status_id": "boolean", "status": True},
    {**REFERENCE_RECORD, "order_status_id": "unknown", "customer_phone": "+1 555 0100", "notes": {"a": 1}},
    {key: value for key, value in REFERENCE_RECORD.items() if key != "carrier"} | {"order_status_id": "absent"},
    {key: value for key, value in REFERENCE_RECORD.items() if key != "order_status_id"},
    12345,
    "a string",
    None,
]


def body(records: list, total: int | None = None) -> bytes:
    meta = {"total": len(records) if total is None else total, "page": 1, "limit": 100, "has_more": False}
    return json.dumps({"data": records, "meta": meta}).encode()


def assert_normalised_alike(decoded: list, as_python_reads_it: list) -> None:
    for pii_mode in PII_MODES:
        ours, theirs = (normalise_order_statuses(records, fetched_at=FETCHED, expected_day=DAY, pii_mode=pii_mode,
                                                 pii_hash_key="test-key-0123456789")
                        for records in (decoded, as_python_reads_it))
        assert ours.rows.equals(theirs.rows), pii_mode
        assert ours.rejects.equals(theirs.rejects), pii_mode
        assert (ours.duplicates_dropped, ours.extra_field_names) == (theirs.duplicates_dropped, theirs.extra_field_names)


def test_a_page_of_the_documented_shape_is_decoded_into_structs_that_normalise_like_json():
    page = body(REGULAR_PAGE)
    decoded = decode_body(page)
    assert all(type(record) is RegularRecord for record in decoded["data"])
    assert [record.as_dict() for record in decoded["data"]] == json.loads(page)["data"]
    assert decoded["meta"] == json.loads(page)["meta"]
    assert decoded["data"][0]["order_status_id"] == REFERENCE_RECORD["order_status_id"]  # reads like the dict
    result = normalise_order_statuses(decoded["data"], fetched_at=FETCHED, expected_day=DAY)
    assert result.rejects.height == 5 and result.duplicates_dropped == 1  # the rules still run on structs
    assert_normalised_alike(decoded["data"], json.loads(page)["data"])


@pytest.mark.parametrize("irregular", IRREGULAR_RECORDS, ids=lambda record: str(record)[:40])
def test_one_irregular_record_makes_the_page_read_as_python_reads_it(irregular):
    page = body([*REGULAR_PAGE[:2], irregular, REGULAR_PAGE[2]])
    decoded = decode_body(page)
    assert decoded == json.loads(page)  # plain JSON values, nothing typed away
    assert not any(type(record) is RegularRecord for record in decoded["data"])
    assert_normalised_alike(decoded["data"], json.loads(page)["data"])


@pytest.mark.parametrize("text", [b'{"data": [{"order_status_id": NaN}], "meta": {}}',
                                  b'{"data": [], "meta": {"total": 100000000000000000000000}}',
                                  b'{"data": {"not": "a list"}, "meta": {}}', b'[1, 2]'])
def test_json_only_python_accepts_or_other_shapes_are_left_to_the_client_checks(text):
    assert decode_body(text) == json.loads(text)


@pytest.mark.parametrize(("text", "read_on_arrival"), [
    (body(REGULAR_PAGE), True),
    (body(IRREGULAR_RECORDS[:7]), True),  # objects of another shape: ids read, records decoded as Python does
    (body(IRREGULAR_RECORDS), False),  # records that are not objects
    (b'{"data": [{"order_status_id": "a", "item": "caf\xc3\xa9"}], "meta": {"total": 1}}', True),  # UTF-8
    (b'{"data": [{"order_status_id": "a", "item": "caf\xe9"}], "meta": {"total": 1}}', False),  # Latin-1
    (b'{"data": [{"order_status_id": "a", "x": NaN}], "meta": {}}', False),  # JSON only Python reads
    (b'{"data": [1], "meta": {}}', False),
    (b'{"data": [{"order_status_id": 7}, {}], "meta": {"page": 1}, "extra": [1]}', True),
    (b'{"data": [], "meta": []}', False),
    (b'{"data": [{"order_status_id": "a", "order_status_id": "b"}], "meta": {}}', True),  # the last key wins
])
def test_ids_read_on_arrival_are_those_of_the_decoded_records_or_the_body_is_left_to_decode_body(
        text, read_on_arrival):
    ids_and_meta = decode_ids(text)
    assert (ids_and_meta is not None) == read_on_arrival
    try:
        decoded = decode_body(text)
    except ValueError:
        assert ids_and_meta is None  # refused on arrival, where the client retries it
        return
    if ids_and_meta is not None:
        assert ids_and_meta == ([record_id(record) for record in decoded["data"]], decoded["meta"])


def test_a_body_that_is_not_json_raises_value_error():
    with pytest.raises(ValueError):
        decode_body(b'{"data": [{"order_status_id": "x"')


def test_mixed_pages_of_a_day_store_what_the_old_path_stored():
    """Regular and irregular records of one day, merged by the client, normalise as before."""
    records = REGULAR_PAGE + IRREGULAR_RECORDS
    decoded = decode_body(body(REGULAR_PAGE))["data"] + decode_body(body(IRREGULAR_RECORDS))["data"]
    assert_normalised_alike(decoded, json.loads(json.dumps(records)))


def test_pre_encoded_pages_are_the_same_bytes_and_refuse_changing_data():
    day = dt.date(2025, 12, 3)
    params = {"start_date": str(day), "end_date": str(day + dt.timedelta(days=2)), "limit": 100}
    answers = []
    for pre_encoded in (False, True, True):
        with OrderSyncSimulator(clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY, pre_encoded=pre_encoded) as sim:
            with httpx.Client(base_url=sim.base_url, headers={"X-API-Key": SIMULATOR_API_KEY}) as http:
                answers.append([http.get("/api/v1/orders/by-date", params={**params, "page": page}).content
                                for page in (1, 2, 3, 2)])
    assert answers[0] == answers[1] == answers[2]
    served = [record for page in answers[0][:3] for record in json.loads(page)["data"]]
    with OrderSyncSimulator(clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY) as truth:
        assert served == truth.served_records_for_days(day, day + dt.timedelta(days=2))[:300]
    with pytest.raises(ValueError, match="paging_drift"):
        OrderSyncSimulator(faults=Faults(paging_drift=0.5), pre_encoded=True)


def test_long_ranges_are_sliced_per_page_like_the_whole_list():
    first, last = dt.date(2025, 11, 28), dt.date(2025, 12, 4)
    with OrderSyncSimulator(clock=SimulatedClock(SIM_NOW), first_day=SIM_FIRST_DAY) as sim:
        everything = sim.served_records_for_days(first, last)
        for offset, limit in ((0, 100), (150, 100), (len(everything) - 30, 100), (len(everything) + 5, 10)):
            assert sim.served_page(first, last, offset, limit) == (everything[offset : offset + limit], len(everything))


def test_look_ups_still_return_the_json_objects_the_api_sent(simulator):
    from ordersync_pipeline.api.client import OrderSyncClient

    record = simulator.records_for_day(dt.date(2025, 12, 3))[0]
    with OrderSyncClient(SIMULATOR_API_KEY, simulator.base_url) as client:
        by_po = client.get_by_po(record["po_number"])
        bulk = client.get_by_po_numbers([record["po_number"]])
    assert by_po == bulk == simulator.records_for_po(record["po_number"])
    assert all(type(line) is dict for line in by_po)  # printable as JSON by `ordersync lookup --json`
