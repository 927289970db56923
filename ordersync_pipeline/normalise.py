"""Raw OrderSync records -> a typed polars frame of order statuses, plus the records that were rejected.

Pure functions: no HTTP, no Dagster, no DuckDB. Every field of the payload survives: known fields get
their column, unknown fields go to `extra_fields` (JSON), and a record that breaks the contract goes to
the rejects frame with its reason and raw JSON instead of being dropped.

In the `hash` and `drop` personal-data modes nothing that is or may be personal data is kept: the customer
fields are hashed/nulled everywhere (rejects' raw JSON too), and the values of fields the reference does
not list, nested objects and arrays, and non-object records are replaced by a `<withheld TYPE>` marker.
Field names are always kept, so drift stays visible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import operator
from dataclasses import dataclass
from typing import Any

import polars as pl

from ordersync_pipeline.api.records import TEXT_FIELDS, RegularRecord, as_json_value

API_FIELDS = frozenset(TEXT_FIELDS)
TIMESTAMP_FIELDS = ("order_date", "delivery_date")
PERSONAL_DATA_FIELDS = ("customer", "customer_email")

UTC_TIMESTAMP = pl.Datetime("us", "UTC")
ORDER_STATUS_SCHEMA: dict[str, pl.DataType] = {
    **{name: (UTC_TIMESTAMP if name in TIMESTAMP_FIELDS else pl.String()) for name in TEXT_FIELDS},
    "delivery_utc_offset": pl.String(),  # the local offset delivery_date was sent with, e.g. -08:00
    "order_day": pl.Date(),
    "fetched_at": UTC_TIMESTAMP,
    "extra_fields": pl.String(),  # JSON object of fields the API sent that the reference does not list
}
REJECT_SCHEMA: dict[str, pl.DataType] = {
    "order_day": pl.Date(),
    "order_status_id": pl.String(),
    "reason": pl.String(),
    "raw_json": pl.String(),
    "fetched_at": UTC_TIMESTAMP,
}

_ISO_WITH_OFFSET = "%Y-%m-%dT%H:%M:%S%.f%:z"
PII_MODES = ("raw", "hash", "drop")
_TEXT_TYPES = frozenset({str, type(None)})


@dataclass(frozen=True)
class NormalisedStatuses:
    rows: pl.DataFrame  # ORDER_STATUS_SCHEMA, one row per order_status_id
    rejects: pl.DataFrame  # REJECT_SCHEMA
    duplicates_dropped: int  # extra copies of an order_status_id (the last copy is kept)
    extra_field_names: tuple[str, ...]  # unknown fields seen, sorted


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean"}.get(type(value), type(value).__name__)


def _withheld(value: Any) -> str | None:
    """What hash/drop modes keep of a value that may be personal data: its JSON type, never the value."""
    return None if value is None else f"<withheld {_json_type(value)}>"


def _number_as_text(value: Any) -> Any:
    # A PO number sent as 12345 is still PO "12345".
    return json.dumps(value) if type(value) in (int, float) else value


class PersonalDataHasher:
    """HMAC-SHA-256 hex of customer names and emails under a secret key: the same customer gets the same
    value every day (so analysts can join and count), while without the key nobody can test a guess (a
    plain SHA-256 of an email is reversed with a list of emails). People compare emails case-insensitively,
    so of a trimmed, lower-cased form."""

    def __init__(self, key: str):
        self._key = key.encode()

    def __call__(self, text: str) -> str:
        return hmac.new(self._key, text.strip().lower().encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never the key
        return "PersonalDataHasher(<key withheld>)"


def _quoting(template: str, column: str, pii_mode: str) -> pl.Expr:
    """A reject reason quoting the offending value in raw mode only: outside it, a value in the wrong field
    may be anything, personal data included."""
    if pii_mode == "raw":
        return pl.format(template, pl.col(column))
    return pl.lit(template.replace(" {}", ""))


def _split_by_contract(
    records: list[Any], pii_mode: str
) -> tuple[list[Any], list[Any], list[str | None], list[tuple[Any, str]]]:
    """One pass over the records: shape-valid ones (text fields only), the originals they came from,
    their unknown fields as JSON (values withheld unless pii_mode is raw), and the records rejected for
    their shape.

    RegularRecords were type-checked by the decoder (records.py) and pass as they are. Other records are
    checked here in Python: JSON values of mixed types cannot be typed by polars without silently
    coercing them; everything else is done in polars.
    """
    valid: list[Any] = []
    originals: list[Any] = []
    extras: list[str | None] = []
    rejects: list[tuple[Any, str]] = []
    for record in records:
        if type(record) is RegularRecord:
            valid.append(record)
            originals.append(record)
            extras.append(None)
            continue
        if type(record) is not dict:
            rejects.append((record, f"record is a JSON {_json_type(record)}, expected an object"))
            continue
        if record.keys() <= API_FIELDS and set(map(type, record.values())) <= _TEXT_TYPES:
            valid.append(record)  # the common case, checked in one cheap expression
            originals.append(record)
            extras.append(None)
            continue
        clean: dict[str, Any] = {}
        unknown: dict[str, Any] = {}
        problem = None
        for key, value in record.items():
            if key not in API_FIELDS:
                unknown[key] = value if pii_mode == "raw" else _withheld(value)
            elif value is None or type(value) in (str, int, float):
                clean[key] = _number_as_text(value)
            else:
                problem = f"{key} is a JSON {_json_type(value)}, expected a string"
                break
        if problem:
            rejects.append((record, problem))
            continue
        valid.append(clean)
        originals.append(record)
        extras.append(json.dumps(unknown, sort_keys=True) if unknown else None)
    return valid, originals, extras, rejects


def _parse_utc(column: str) -> pl.Expr:
    """ISO 8601 with an offset -> UTC, microseconds kept; a 'Z' suffix or a space separator is accepted."""
    text = (
        pl.col(column)
        .str.strip_chars()
        .str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
        .str.replace(r"[Zz]$", "+00:00")
    )
    return text.str.to_datetime(_ISO_WITH_OFFSET, time_unit="us", time_zone="UTC", strict=False)


def normalise_order_statuses(
    records: list[Any],
    *,
    fetched_at: dt.datetime,
    expected_day: dt.date | None = None,
    pii_mode: str = "raw",
    pii_hash_key: str | None = None,
) -> NormalisedStatuses:
    """Type the records: UTC timestamps, strings, nulls; one row per order_status_id; rejects kept.

    `expected_day`: the by-date day that was asked for; a record whose order_date falls on another UTC
    day is the API being wrong and is rejected rather than stored under the wrong partition.
    `pii_mode`: what to keep of customer name and email: "raw", "hash" (HMAC-SHA-256 hex keyed with
    `pii_hash_key`) or "drop" (null); outside "raw", values that may be personal data are withheld too (see
    the module docstring), rejects' reasons included.
    """
    if pii_mode not in PII_MODES:
        raise ValueError(f"pii_mode must be one of {', '.join(PII_MODES)}; got {pii_mode!r}")
    if pii_mode == "hash" and not pii_hash_key:
        raise ValueError("pii_mode 'hash' needs a secret pii_hash_key (ORDERSYNC_PII_HASH_KEY): an unkeyed hash of "
                         "an email is reversed with a list of emails")
    hasher = PersonalDataHasher(pii_hash_key) if pii_mode == "hash" else None
    fetched_at = fetched_at.astimezone(dt.timezone.utc)
    valid, originals, extras, shape_rejects = _split_by_contract(records, pii_mode)

    frame = _text_frame(valid).with_columns(
        pl.Series("extra_fields", extras, dtype=pl.String),
        pl.int_range(pl.len()).alias("_index"),
    )
    frame = frame.with_columns(
        *(_parse_utc(name).alias(f"_{name}_utc") for name in TIMESTAMP_FIELDS),
        pl.col("delivery_date").str.strip_chars().str.extract(r"([+-]\d{2}:?\d{2}|[Zz])$").alias("delivery_utc_offset"),
    ).with_columns(pl.col("_order_date_utc").dt.date().alias("order_day"))

    reason = (
        pl.when(pl.col("order_status_id").is_null() | (pl.col("order_status_id").str.strip_chars() == ""))
        .then(pl.lit("missing order_status_id"))
        .when(pl.col("order_date").is_null())
        .then(pl.lit("missing order_date"))
        .when(pl.col("_order_date_utc").is_null())
        .then(_quoting("unparseable order_date {} (expected ISO 8601 with a UTC offset)", "order_date", pii_mode))
        .when(pl.col("delivery_date").is_not_null() & pl.col("_delivery_date_utc").is_null())
        .then(_quoting("unparseable delivery_date {} (expected ISO 8601 with a UTC offset)", "delivery_date", pii_mode))
    )
    if expected_day is not None:
        reason = reason.when(pl.col("order_day") != expected_day).then(
            pl.format("order_date {} is outside the requested day {}", pl.col("order_date"), pl.lit(str(expected_day)))
        )
    frame = frame.with_columns(reason.otherwise(None).alias("_reason"))

    bad = frame.filter(pl.col("_reason").is_not_null()).select("_index", "_reason")
    good = frame.filter(pl.col("_reason").is_null())
    deduplicated = good.unique(subset="order_status_id", keep="last", maintain_order=True)

    rows = deduplicated.with_columns(
        pl.col("_order_date_utc").alias("order_date"),
        pl.col("_delivery_date_utc").alias("delivery_date"),
        pl.lit(fetched_at).cast(UTC_TIMESTAMP).alias("fetched_at"),
        *_protect_personal_data(pii_mode, hasher),
    ).select(list(ORDER_STATUS_SCHEMA))

    # Rejected rows are few: look their original records up by position to keep the raw JSON.
    rejected = [(as_json_value(originals[index]), reason) for index, reason in zip(bad["_index"], bad["_reason"])]
    rejects = _rejects_frame(rejected + shape_rejects, expected_day=expected_day, fetched_at=fetched_at,
                             pii_mode=pii_mode, hasher=hasher)
    extra_names = sorted({key for text in extras if text for key in json.loads(text)})
    return NormalisedStatuses(rows, rejects, good.height - deduplicated.height, tuple(extra_names))


_FIELD_GETTERS = [operator.attrgetter(name) for name in TEXT_FIELDS]


def _text_frame(valid: list[Any]) -> pl.DataFrame:
    """The text fields of shape-valid records as String columns, in one step when all are RegularRecords."""
    if all(type(record) is RegularRecord for record in valid):
        # A list per field, read with attrgetter, each made a String Series: 1.3-1.4 µs of CPU (and GIL) per
        # line, against 2.0-2.2 for polars building the columns from row tuples and 2.3-2.8 for transposing
        # the tuples in Python (200,000 records, December 2026).
        return pl.DataFrame([pl.Series(name, list(map(get, valid)), dtype=pl.String)
                             for name, get in zip(TEXT_FIELDS, _FIELD_GETTERS)])
    schema = {name: pl.String for name in TEXT_FIELDS}
    return pl.DataFrame([as_json_value(record) for record in valid], schema=schema)


def _protect_personal_data(pii_mode: str, hasher: PersonalDataHasher | None) -> list[pl.Expr]:
    if pii_mode == "raw":
        return []
    if pii_mode == "drop":
        return [pl.lit(None, dtype=pl.String).alias(name) for name in PERSONAL_DATA_FIELDS]
    return [pl.col(name).map_elements(hasher, return_dtype=pl.String).alias(name) for name in PERSONAL_DATA_FIELDS]


def _protect_raw_record(record: Any, pii_mode: str, hasher: PersonalDataHasher | None) -> Any:
    """A rejected record as it may be stored: as received in `raw` mode; otherwise with the customer fields
    hashed/nulled as their columns would be, and every value that may be personal data withheld."""
    if pii_mode == "raw":
        return record
    if type(record) is not dict:
        return _withheld(record)
    protected = {}
    for key, value in record.items():
        if key in PERSONAL_DATA_FIELDS:
            text = _number_as_text(value)  # as its column would hold it, so the hashes match
            if pii_mode == "drop" or text is None:
                protected[key] = None
            else:
                protected[key] = hasher(text) if type(text) is str else _withheld(text)
        elif key not in API_FIELDS or type(value) in (dict, list):  # unlisted, or nested where text belongs
            protected[key] = _withheld(value)
        else:
            protected[key] = value
    return protected


def _rejects_frame(
    rejected: list[tuple[Any, str]], *, expected_day: dt.date | None, fetched_at: dt.datetime, pii_mode: str,
    hasher: PersonalDataHasher | None,
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "order_day": [expected_day] * len(rejected),
            "order_status_id": [
                record.get("order_status_id") if isinstance(record, dict) and isinstance(record.get("order_status_id"), str) else None
                for record, _ in rejected
            ],
            "reason": [reason for _, reason in rejected],
            "raw_json": [json.dumps(_protect_raw_record(record, pii_mode, hasher), sort_keys=True, default=str)
                         for record, _ in rejected],
            "fetched_at": [fetched_at] * len(rejected),
        },
        schema=REJECT_SCHEMA,
    )
