"""What can go wrong talking to the API: the errors the client raises, which failures it retries and how
long it waits, and keeping the API key out of every message (a server may echo it back).

Plain Python + httpx + tenacity, used by client.py only.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re

import httpx
import tenacity

RETRYABLE_STATUS_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
REDACTED = "[redacted]"
# An API-key header quoted in text: `X-API-Key: v`, `"x-api-key": "v"`, `x_api_key=v`, whatever the key.
_API_KEY_HEADER = re.compile(r"""(x[-_]api[-_]key["']?\s*[:=]\s*["']?)[^\s"',;&}]+""", re.IGNORECASE)


class OrderSyncError(Exception):
    """Base class of every error this client raises. Messages never contain the API key."""


class OrderSyncConfigError(OrderSyncError):
    """The client was configured with something it cannot use (bad URL, empty key)."""


class OrderSyncAuthError(OrderSyncError):
    """401/403: the key is missing, wrong, revoked or not allowed to read this data."""


class OrderSyncRequestError(OrderSyncError):
    """A 4xx other than auth: the request itself is wrong; retrying will not help."""

    def __init__(self, message: str, status_code: int, server_message: str):
        super().__init__(message)
        self.status_code = status_code
        self.server_message = server_message


class OrderSyncNotFoundError(OrderSyncRequestError):
    """404 with the API's JSON error envelope: nothing at that look-up path (see OrderSyncClient._look_up)."""


class OrderSyncUnavailableError(OrderSyncError):
    """Retries were exhausted on 429/5xx, timeouts, dropped connections or broken bodies."""


class OrderSyncPagingError(OrderSyncError):
    """By-date results kept shifting while we paged, and no consistent day could be read."""


class RetryableResponse(Exception):
    """Raised inside the client for a response worth retrying (429/5xx, truncated or non-JSON body)."""

    def __init__(self, description: str, retry_after: float | None = None):
        super().__init__(description)
        self.retry_after = retry_after


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def redact_key(text: str, api_key: str) -> str:
    """`text` without the API key or any X-API-Key header value: a server or proxy may echo request headers
    in its error bodies, and those words end up in exceptions and run logs."""
    text = _API_KEY_HEADER.sub(lambda match: match.group(1) + REDACTED, text)
    return text.replace(api_key, REDACTED) if api_key else text


def server_message(response: httpx.Response, api_key: str) -> str:
    """The server's own words about an error, redacted, then shortened (so no key is cut in half)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip() or response.reason_phrase
    else:
        value = body
        if isinstance(body, dict):
            value = next((body[key] for key in ("error", "message", "detail", "errors") if key in body), body)
        text = value if isinstance(value, str) else json.dumps(value)
    return redact_key(text, api_key)[:300]


class WaitHonouringRetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with jitter, but never shorter than the server's Retry-After.

    A Retry-After longer than the request's budget ends the retries (stop_before_delay) instead of being cut.
    """

    def __init__(self, initial: float, maximum: float):
        self._backoff = tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        backoff = self._backoff(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return max(backoff, retry_after) if retry_after is not None else backoff


def is_retryable(exc: BaseException) -> bool:
    """429/5xx/broken bodies, timeouts and network errors; not mistakes of ours that a retry repeats."""
    if isinstance(exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)):
        return False
    return isinstance(exc, (RetryableResponse, httpx.TransportError))


def describe_failure(exc: BaseException, api_key: str) -> str:
    if isinstance(exc, RetryableResponse):
        return str(exc)  # built from server_message, already redacted
    return redact_key(f"{type(exc).__name__}: {exc}", api_key) if str(exc) else type(exc).__name__
