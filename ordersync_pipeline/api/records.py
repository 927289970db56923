"""Response bodies -> records, decoded and type-checked in native code (msgspec), without a dict per record.

A page whose every record is *regular* — a JSON object with exactly the reference's fields, each a string or
null — is decoded straight into `RegularRecord` structs: msgspec checks those types in C while it parses,
so nothing per record runs in Python, and normalise.py turns the structs into columns in one step. Any
other page (a number or an object where text belongs, an unknown or missing field, a record that is not an
object, JSON that msgspec is stricter about than Python) is decoded with the standard library exactly as
before, and its records stay the raw JSON values the API sent, for normalise.py's per-record rules.

A page is first read only for its envelope and each record's order_status_id (`decode_ids`), and its records
are decoded when they are first asked for (a by-date day's when it is normalised): a page waiting for the rest
of its day holds its bytes (~0.47 KB a record) instead of ~1.26 KB of Python objects, so more days can be in
flight in the same memory.

No Dagster, no HTTP: the client decodes with this, normalise.py recognises regular records by their type.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

# The API's fields, in the order of the reference. Order matters: it is the table's column order.
TEXT_FIELDS = (
    "order_id",
    "order_status_id",
    "supplier_order_id",
    "order_date",
    "po_number",
    "item",
    "customer",
    "supplier",
    "status",
    "customer_email",
    "tracking_number",
    "tracking_url",
    "carrier",
    "delivery_date",
)


class RegularRecord(
    msgspec.Struct,
    forbid_unknown_fields=True,  # an unknown field makes the page irregular: it belongs in extra_fields
    gc=False,  # holds only strings: the cyclic garbage collector need not track a million of these
):
    """One record with exactly the reference's fields, every value a string or null (all required, so a
    record missing a field is irregular and keeps its exact shape for a reject's raw_json)."""

    order_id: str | None
    order_status_id: str | None
    supplier_order_id: str | None
    order_date: str | None
    po_number: str | None
    item: str | None
    customer: str | None
    supplier: str | None
    status: str | None
    customer_email: str | None
    tracking_number: str | None
    tracking_url: str | None
    carrier: str | None
    delivery_date: str | None

    def __getitem__(self, field: str) -> str | None:
        """record["order_status_id"], as on the JSON object it was decoded from."""
        if field not in TEXT_FIELDS:
            raise KeyError(field)
        return getattr(self, field)

    def get(self, field: str, default: Any = None) -> Any:
        return getattr(self, field) if field in TEXT_FIELDS else default

    def as_dict(self) -> dict[str, str | None]:
        """The JSON object as the API sent it (every field present, so nothing is lost)."""
        return dict(zip(TEXT_FIELDS, msgspec.structs.astuple(self)))


class _RegularEnvelope(msgspec.Struct):
    data: list[RegularRecord]
    meta: dict[str, Any]


_decode_regular = msgspec.json.Decoder(_RegularEnvelope).decode


class _RecordId(msgspec.Struct, gc=False):
    """Only a record's order_status_id, whatever JSON it is; its other fields are skipped, not decoded."""

    order_status_id: Any = None


class _IdsEnvelope(msgspec.Struct):
    data: list[_RecordId]
    meta: dict[str, Any]


_decode_ids = msgspec.json.Decoder(_IdsEnvelope).decode


def decode_ids(body: bytes) -> tuple[list[Any], dict[str, Any]] | None:
    """The order_status_id of every record (as `record_id` reads it from the decoded record) and the meta of a
    UTF-8 envelope whose records are all JSON objects; None for anything else, which decode_body then reads (JSON
    only Python's reader accepts) or refuses (not JSON, not UTF-8)."""
    if not body.isascii():
        try:  # msgspec checks the text of the fields it decodes only; decode_body checks all of it, as json.loads does
            body.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
    try:
        envelope = _decode_ids(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return [record.order_status_id for record in envelope.data], envelope.meta


def decode_body(body: bytes) -> Any:
    """A response body as `{"data": [...], "meta": {...}}`: regular records as RegularRecord, anything else
    as Python's json module reads it (raises ValueError if the body is not JSON)."""
    try:
        envelope = _decode_regular(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        # Irregular records, another shape, or JSON that only Python's reader accepts (NaN, huge numbers):
        # decode it as before, so what normalisation and the error messages see does not change.
        return json.loads(body)
    return {"data": envelope.data, "meta": envelope.meta}


def record_id(record: Any) -> Any:
    """The order_status_id a record was sent with (any JSON type), or None."""
    if type(record) is RegularRecord:
        return record.order_status_id
    return record.get("order_status_id") if isinstance(record, dict) else None


def as_json_value(record: Any) -> Any:
    """A record as the JSON value it was sent as (a dict for a RegularRecord)."""
    return record.as_dict() if type(record) is RegularRecord else record
