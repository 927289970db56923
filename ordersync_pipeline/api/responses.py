"""One response of the Order Status API -> a Page of records, or the error it stands for.

No retries and no paging (client.py does those); no Dagster. The body is checked when it arrives (the envelope,
its meta and each record's order_status_id, records.decode_ids) and its records are decoded by
records.decode_body when asked for (Page.decode_records), so a page can wait for its day as bytes.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from ordersync_pipeline.api.errors import (
    RETRYABLE_STATUS_CODES,
    OrderSyncAuthError,
    OrderSyncConfigError,
    OrderSyncNotFoundError,
    OrderSyncRequestError,
    RetryableResponse,
    redact_key,
    retry_after_seconds,
    server_message,
)
from ordersync_pipeline.api.records import decode_body, decode_ids, record_id

DEFAULT_BASE_URL = "https://api.withordersync.com"
NOT_THE_API = f"ORDERSYNC_BASE_URL does not point at the Order Status API (it should look like {DEFAULT_BASE_URL})"


@dataclass(frozen=True)
class PageMeta:
    total: int
    page: int
    limit: int
    has_more: bool


@dataclass(frozen=True, eq=False)
class Page:
    record_ids: list[Any]  # each record's order_status_id as sent (any JSON type, None if it has none)
    meta: PageMeta
    body: bytes = field(repr=False)  # the response body: an envelope already checked by parse_page
    server_time: dt.datetime | None = None  # the response's `Date` header: the API's clock, to the second

    def decode_records(self) -> list[Any]:
        """RegularRecord, or the raw JSON values as sent (records.decode_body; see normalise.py), decoded anew at
        each call and not kept: the page holds its bytes, ~0.47 KB a record against ~1.26 KB decoded."""
        return decode_body(self.body)["data"]


def wrong_base_url(not_found: OrderSyncNotFoundError, why: str) -> OrderSyncConfigError:
    return OrderSyncConfigError(f"{not_found} ({why}): {NOT_THE_API}")


def _is_json_error_envelope(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return "json" in response.headers.get("Content-Type", "") and isinstance(body, dict) and "error" in body


def parse_page(response: httpx.Response, method: str, path: str, api_key: str) -> Page:
    status = response.status_code
    if status in (401, 403):
        raise OrderSyncAuthError(
            f"OrderSync refused the API key (HTTP {status}: {server_message(response, api_key)}). Check that "
            "ORDERSYNC_API_KEY holds a live key of this retailer and that ORDERSYNC_BASE_URL is right."
        )
    if status in RETRYABLE_STATUS_CODES:
        raise RetryableResponse(f"HTTP {status}: {server_message(response, api_key)}",
                                 retry_after=retry_after_seconds(response))
    if 300 <= status < 400:
        location = redact_key(response.headers.get("Location", "an unnamed place"), api_key)
        raise OrderSyncConfigError(
            f"OrderSync answered {method} {path} with a redirect (HTTP {status} to {location}): check ORDERSYNC_BASE_URL"
        )
    content_type = response.headers.get("Content-Type", "application/json")
    if 200 <= status < 300 and "json" not in content_type:
        raise OrderSyncConfigError(
            f"OrderSync answered {method} {path} with {content_type}, not JSON: {NOT_THE_API}"
        )
    if status == 404 and not _is_json_error_envelope(response):  # a web server's page, not the API's answer
        raise OrderSyncConfigError(
            f"OrderSync answered {method} {path} with HTTP 404 ({content_type}) and not the API's JSON error: "
            + NOT_THE_API
        )
    if 400 <= status < 500:
        message = server_message(response, api_key)
        error = OrderSyncNotFoundError if status == 404 else OrderSyncRequestError
        raise error(f"OrderSync rejected {method} {path} with HTTP {status}: {message}", status, message)
    if not 200 <= status < 300:
        raise RetryableResponse(f"unexpected HTTP {status}")
    content = response.content
    ids_and_meta = decode_ids(content)
    if ids_and_meta is None:  # not JSON objects in an envelope, not UTF-8, or JSON only Python reads: say which
        try:
            body = decode_body(content)
        except ValueError:
            raise RetryableResponse(f"response body is not valid JSON ({len(content)} bytes, cut short?)") from None
        if not (isinstance(body, dict) and isinstance(body.get("data"), list) and isinstance(body.get("meta"), dict)):
            raise RetryableResponse("response is not the documented {data: [...], meta: {...}} envelope")
        ids_and_meta = [record_id(record) for record in body["data"]], body["meta"]
    record_ids, meta = ids_and_meta
    try:
        page_meta = PageMeta(
            total=int(meta.get("total", len(record_ids))),
            page=int(meta.get("page", 1)),
            limit=int(meta.get("limit", len(record_ids))),
            has_more=bool(meta.get("has_more", False)),
        )
    except (TypeError, ValueError):
        raise RetryableResponse(f"response meta is malformed: {redact_key(json.dumps(meta), api_key)[:200]}") from None
    return Page(record_ids=record_ids, meta=page_meta, body=content, server_time=_server_time(response))


def _server_time(response: httpx.Response) -> dt.datetime | None:
    """The `Date` header as a UTC datetime, or None if the server sent none or an unreadable one."""
    try:
        moment = email.utils.parsedate_to_datetime(response.headers.get("Date", ""))
    except (TypeError, ValueError, IndexError):
        return None
    return moment.astimezone(dt.timezone.utc) if moment.tzinfo is not None else None
