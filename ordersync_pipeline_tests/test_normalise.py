"""normalise_order_statuses as a pure function: types, offsets, nulls, duplicates, rejects, extras."""

import datetime as dt
import hashlib
import hmac
import json

import polars as pl
import pytest

from ordersync_pipeline.normalise import ORDER_STATUS_SCHEMA, TEXT_FIELDS, normalise_order_statuses
from ordersync_pipeline_tests.lines import FETCHED, REFERENCE_RECORD

UTC = dt.timezone.utc


def normalise(records, **options):
    return normalise_order_statuses(records, fetched_at=FETCHED, **options)


def test_the_reference_record_is_typed_with_offsets_applied():
    result = normalise([REFERENCE_RECORD], expected_day=dt.date(2025, 12, 3))
    assert result.rows.schema == pl.Schema(ORDER_STATUS_SCHEMA)
    row = result.rows.row(0, named=True)
    assert row["order_date"] == dt.datetime(2025, 12, 3, 9, 35, 23, 961116, tzinfo=UTC)  # microseconds kept
    assert row["delivery_date"] == dt.datetime(2025, 12, 9, 21, 5, tzinfo=UTC)  # -08:00 applied, not dropped
    assert row["delivery_utc_offset"] == "-08:00"
    assert row["order_day"] == dt.date(2025, 12, 3)
    assert row["fetched_at"] == FETCHED
    for name in TEXT_FIELDS:
        if name not in ("order_date", "delivery_date"):
            assert row[name] == REFERENCE_RECORD[name]
    assert row["extra_fields"] is None and result.rejects.is_empty()


@pytest.mark.parametrize("text, expected", [
    ("2025-12-03T23:30:00-05:00", dt.datetime(2025, 12, 4, 4, 30, tzinfo=UTC)),
    ("2025-12-03T09:00:00Z", dt.datetime(2025, 12, 3, 9, 0, tzinfo=UTC)),
    ("2025-12-03 09:00:00.5+01:00", dt.datetime(2025, 12, 3, 8, 0, 0, 500000, tzinfo=UTC)),
    ("2025-12-03T09:00:00.000001+05:30", dt.datetime(2025, 12, 3, 3, 30, 0, 1, tzinfo=UTC)),
])
def test_timestamps_in_any_offset_become_utc(text, expected):
    result = normalise([{**REFERENCE_RECORD, "delivery_date": text}])
    assert result.rows["delivery_date"][0] == expected


def test_a_day_is_the_utc_day_of_order_date():
    late_evening_in_new_york = {**REFERENCE_RECORD, "order_date": "2025-12-03T21:00:00-05:00"}
    assert normalise([late_evening_in_new_york]).rows["order_day"][0] == dt.date(2025, 12, 4)


def test_null_and_absent_fields_become_nulls():
    unshipped = {"order_status_id": "x1", "order_id": "o1", "order_date": "2025-12-03T10:00:00+00:00",
                 "status": "processing", "tracking_number": None, "delivery_date": None}
    row = normalise([unshipped]).rows.row(0, named=True)
    for name in ("tracking_number", "tracking_url", "carrier", "delivery_date", "delivery_utc_offset", "customer",
                 "supplier_order_id", "extra_fields"):
        assert row[name] is None
    assert row["status"] == "processing"


def test_one_row_per_order_status_id_keeping_the_last_copy():
    first = {**REFERENCE_RECORD, "status": "shipped"}
    result = normalise([first, {**REFERENCE_RECORD, "order_status_id": "other"}, REFERENCE_RECORD])
    assert result.rows.height == 2 and result.duplicates_dropped == 1
    assert result.rows.filter(pl.col("order_status_id") == "aabbccdd12345678")["status"].to_list() == ["delivered"]


def test_unknown_fields_are_kept_as_json_and_reported():
    result = normalise([{**REFERENCE_RECORD, "warehouse": "NJ-2", "weight_kg": 1.5}])
    assert json.loads(result.rows["extra_fields"][0]) == {"warehouse": "NJ-2", "weight_kg": 1.5}
    assert result.extra_field_names == ("warehouse", "weight_kg")


def test_numbers_in_text_fields_keep_their_value_as_text():
    row = normalise([{**REFERENCE_RECORD, "po_number": 12345, "tracking_number": 987654321012}]).rows.row(0, named=True)
    assert row["po_number"] == "12345" and row["tracking_number"] == "987654321012"


@pytest.mark.parametrize("bad, reason", [
    ({**REFERENCE_RECORD, "order_status_id": None}, "missing order_status_id"),
    ({k: v for k, v in REFERENCE_RECORD.items() if k != "order_status_id"}, "missing order_status_id"),
    ({**REFERENCE_RECORD, "order_date": None}, "missing order_date"),
    ({**REFERENCE_RECORD, "order_date": "03/12/2025"}, "unparseable order_date 03/12/2025"),
    ({**REFERENCE_RECORD, "order_date": "2025-12-03T09:35:23"}, "unparseable order_date"),  # no offset: ambiguous
    ({**REFERENCE_RECORD, "delivery_date": "soon"}, "unparseable delivery_date soon"),
    ({**REFERENCE_RECORD, "status": {"code": 3}}, "status is a JSON object, expected a string"),
    ({**REFERENCE_RECORD, "item": ["a", "b"]}, "item is a JSON array"),
    ({**REFERENCE_RECORD, "carrier": True}, "carrier is a JSON boolean"),
    ({**REFERENCE_RECORD, "order_date": "2025-12-04T00:00:00+00:00"}, "outside the requested day 2025-12-03"),
    ("just a string", "record is a JSON str, expected an object"),
])
def test_contract_breaking_records_are_rejected_with_reason_and_raw_json(bad, reason):
    good = {**REFERENCE_RECORD, "order_status_id": "good-one"}
    result = normalise([good, bad], expected_day=dt.date(2025, 12, 3))
    assert result.rows["order_status_id"].to_list() == ["good-one"]  # the day goes on
    assert result.rejects.height == 1
    reject = result.rejects.row(0, named=True)
    assert reason in reject["reason"]
    assert json.loads(reject["raw_json"]) == bad
    assert reject["order_day"] == dt.date(2025, 12, 3) and reject["fetched_at"] == FETCHED


HASH_KEY = "a-secret-of-the-retailer"


def keyed(text: bytes, key: str = HASH_KEY) -> str:
    return hmac.new(key.encode(), text, hashlib.sha256).hexdigest()


def test_personal_data_can_be_hashed_or_dropped():
    hashed = normalise([REFERENCE_RECORD], pii_mode="hash", pii_hash_key=HASH_KEY).rows.row(0, named=True)
    assert hashed["customer_email"] == keyed(b"tt@gmail.com")
    assert hashed["customer"] == keyed(b"tom thomas")
    # Keyed: a dictionary of plain SHA-256 hashes of emails does not find it, another key gives another value.
    assert hashed["customer_email"] != hashlib.sha256(b"tt@gmail.com").hexdigest()
    other = normalise([REFERENCE_RECORD], pii_mode="hash", pii_hash_key="another-key").rows.row(0, named=True)
    assert other["customer_email"] != hashed["customer_email"]
    again = normalise([{**REFERENCE_RECORD, "customer_email": " TT@gmail.com"}], pii_mode="hash",
                      pii_hash_key=HASH_KEY).rows.row(0, named=True)
    assert again["customer_email"] == hashed["customer_email"]  # the same customer joins across days
    with pytest.raises(ValueError, match="ORDERSYNC_PII_HASH_KEY"):
        normalise([REFERENCE_RECORD], pii_mode="hash")
    dropped = normalise([REFERENCE_RECORD], pii_mode="drop").rows.row(0, named=True)
    assert dropped["customer"] is None and dropped["customer_email"] is None
    with pytest.raises(ValueError, match="pii_mode"):
        normalise([REFERENCE_RECORD], pii_mode="encrypt")


def test_an_empty_page_gives_empty_typed_frames():
    result = normalise([])
    assert result.rows.is_empty() and result.rows.schema == pl.Schema(ORDER_STATUS_SCHEMA)
    assert result.rejects.is_empty()


PERSONAL_VALUES = ("Tom Thomas", "tt@gmail.com", "+1 555 0100", "call Tom")


def stored_text(result) -> str:
    """Everything the frames would put in the warehouse, as one string to search."""
    return json.dumps([result.rows.to_dicts(), result.rejects.to_dicts()], default=str, ensure_ascii=False)


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_hash_and_drop_keep_no_personal_value_in_extras_or_rejects(mode):
    with_phone = {**REFERENCE_RECORD, "order_status_id": "phone", "customer_phone": "+1 555 0100"}
    bad_date = {**REFERENCE_RECORD, "order_status_id": "bad-date", "order_date": "12/03/2025 09:35",
                "customer_phone": "+1 555 0100", "notes": {"text": "call Tom"}}
    nested = {**REFERENCE_RECORD, "order_status_id": "nested", "status": {"note": "call Tom"}}
    result = normalise([with_phone, bad_date, nested, "Tom Thomas <tt@gmail.com>", ["Tom Thomas"]],
                       expected_day=dt.date(2025, 12, 3), pii_mode=mode, pii_hash_key=HASH_KEY)
    text = stored_text(result)
    assert not [value for value in PERSONAL_VALUES if value in text]
    # Field names stay visible, values are replaced by their type.
    assert json.loads(result.rows["extra_fields"][0]) == {"customer_phone": "<withheld str>"}
    assert result.extra_field_names == ("customer_phone", "notes")
    rejects = {row["order_status_id"]: (row["reason"], json.loads(row["raw_json"])) for row in result.rejects.to_dicts()}
    reason, raw = rejects["bad-date"]
    # The reason names the field, never its value: outside raw mode a value in the wrong field may be personal.
    assert reason.startswith("unparseable order_date (") and "12/03/2025" not in reason
    assert raw["customer_phone"] == "<withheld str>" and raw["notes"] == "<withheld object>"
    assert raw["order_date"] == "12/03/2025 09:35" and raw["item"] == REFERENCE_RECORD["item"]  # the rest as sent
    expected_customer = {"hash": keyed(b"tom thomas"), "drop": None}[mode]
    expected_email = {"hash": keyed(b"tt@gmail.com"), "drop": None}[mode]
    assert raw["customer"] == expected_customer and raw["customer_email"] == expected_email  # as in the columns
    assert rejects["nested"][1]["status"] == "<withheld object>"
    non_objects = sorted(json.loads(row["raw_json"]) for row in result.rejects.to_dicts() if row["order_status_id"] is None)
    assert non_objects == ["<withheld array>", "<withheld str>"]  # only the type of a non-object record


def test_raw_mode_keeps_everything_as_received():
    bad_date = {**REFERENCE_RECORD, "order_date": "12/03/2025 09:35", "customer_phone": "+1 555 0100"}
    result = normalise([{**REFERENCE_RECORD, "order_status_id": "phone", "customer_phone": "+1 555 0100"}, bad_date,
                        "Tom Thomas"], expected_day=dt.date(2025, 12, 3))
    assert json.loads(result.rows["extra_fields"][0]) == {"customer_phone": "+1 555 0100"}
    assert [json.loads(raw) for raw in result.rejects["raw_json"]] == [bad_date, "Tom Thomas"]
