"""The reference page's example record, synthetic order lines and day loads for the normalise and warehouse
tests (the `conn` fixture in conftest stores them)."""

import datetime as dt

from ordersync_pipeline.normalise import normalise_order_statuses
from ordersync_pipeline.storage.warehouse import DayLoad

DAY = dt.date(2025, 12, 3)
FETCHED = dt.datetime(2025, 12, 10, 6, 30, tzinfo=dt.timezone.utc)
REFERENCE_RECORD = {  # the example of the reference page
    "order_id": "abcd12345678", "order_status_id": "aabbccdd12345678", "supplier_order_id": "FD123456",
    "order_date": "2025-12-03T09:35:23.961116+00:00", "po_number": "AB12345", "item": "Cobra DS Adapt",
    "customer": "Tom Thomas", "supplier": "cobra puma golf", "status": "delivered", "customer_email": "tt@gmail.com",
    "tracking_number": "12345678",
    "tracking_url": "https://www.fedex.com/apps/fedextrack/?tracknumbers=12345678&cntry_code=US",
    "carrier": "fedex", "delivery_date": "2025-12-09T13:05:00-08:00",
}


def line(n: int, status: str = "processing", day: dt.date = DAY) -> dict:
    return {"order_status_id": f"L{n}", "order_id": f"O{n // 2}", "po_number": f"PO{n // 2}",
            "order_date": f"{day}T10:{n:02d}:00+00:00", "status": status, "supplier": "titleist"}


def day_load(records: list[dict], fetched_at: dt.datetime, day: dt.date = DAY) -> DayLoad:
    result = normalise_order_statuses(records, fetched_at=fetched_at, expected_day=day)
    return DayLoad(day, result.rows, result.rejects, len(records), result.duplicates_dropped, 1, 1, 0, True,
                   result.extra_field_names, fetched_at)


def at(hour: int, day: int = 10) -> dt.datetime:
    return dt.datetime(2025, 12, day, hour, tzinfo=dt.timezone.utc)
