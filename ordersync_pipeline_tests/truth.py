"""The simulator's truth turned into expected table rows, independently of normalise.py."""

import datetime as dt

import duckdb

API_TEXT_FIELDS = ("order_id", "order_status_id", "supplier_order_id", "po_number", "item", "customer", "supplier",
                   "status", "customer_email", "tracking_number", "tracking_url", "carrier")


def expected_row(record: dict) -> dict:
    def utc(text):
        return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc) if text else None

    row = {name: record[name] for name in API_TEXT_FIELDS}
    row["order_date"] = utc(record["order_date"])
    row["delivery_date"] = utc(record["delivery_date"])
    row["order_day"] = row["order_date"].date()
    return row


def stored_rows(database: str, where: str = "true") -> dict[str, dict]:
    columns = ", ".join((*API_TEXT_FIELDS, "order_date", "delivery_date", "order_day"))
    with duckdb.connect(database, read_only=True) as conn:
        frame = conn.sql(f"SELECT {columns} FROM order_statuses WHERE {where}").pl()
    return {row["order_status_id"]: row for row in frame.to_dicts()}


def assert_table_equals_truth(database: str, truth_records: list[dict], where: str = "true") -> None:
    stored = stored_rows(database, where)
    expected = {r["order_status_id"]: expected_row(r) for r in truth_records}
    assert stored.keys() == expected.keys(), (
        f"missing {len(expected.keys() - stored.keys())}, unexpected {len(stored.keys() - expected.keys())}")
    mismatched = [key for key in expected if stored[key] != expected[key]]
    assert not mismatched, f"{len(mismatched)} lines differ, e.g. {stored[mismatched[0]]} != {expected[mismatched[0]]}"


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (what DuckDB's quantile_cont computes)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
