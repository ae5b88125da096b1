"""Per-user rate limits of ``write-checkpoint2.json`` and uploads (``POWERSYNC['RATE_LIMITS']``).

Each write checkpoint is a replication batch and a wake-up of every stream, each upload a write transaction:
one user must not be able to issue them without bound. Counts are fixed windows in Django's cache
(``cache.add`` + ``cache.incr``, atomic on Redis, Memcached and the local-memory cache), so every process
that shares the cache shares the limit; with the default local-memory cache each process counts on its own.
Over the limit the endpoints answer 429 with ``Retry-After`` and a JSON error body.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from typing import Any

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured

from .conf import get_config

RATE_LIMITED = "RATE_LIMITED"
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
            "d": 86400, "day": 86400}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+?)s?\s*$")


class RateLimited(Exception):
    """A request over its limit: answered 429 with ``Retry-After: retry_after`` and :meth:`as_json`."""

    status = 429

    def __init__(self, scope: str, limit: int, period: int, retry_after: int) -> None:
        super().__init__(f"{scope}: more than {limit} requests in {period} s")
        self.scope = scope
        self.retry_after = retry_after
        self.description = f"Too many requests: at most {limit} per {period} s; retry in {retry_after} s"

    def as_json(self) -> dict[str, Any]:
        return {"error": {"code": RATE_LIMITED, "status": self.status, "description": self.description,
                          "name": "TooManyRequests"}}


def parse_rate(value: Any) -> tuple[int, int] | None:
    """``"120/minute"``, ``"10/30s"`` or ``(count, seconds)`` -> (count, seconds); None: unlimited."""
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        count, seconds = value
    else:
        match = _RATE_RE.match(value.lower()) if isinstance(value, str) else None
        if match is None or match.group(3) not in _PERIODS:
            raise ImproperlyConfigured(
                f"POWERSYNC['RATE_LIMITS'] value {value!r}: expected 'N/second|minute|hour|day' (e.g. '120/minute', "
                "'10/30s'), (count, seconds) or None.")
        count, seconds = int(match.group(1)), int(match.group(2) or 1) * _PERIODS[match.group(3)]
    if count < 1 or seconds < 1:
        raise ImproperlyConfigured(f"POWERSYNC['RATE_LIMITS'] value {value!r} must allow at least 1 per second.")
    return count, seconds


def check(scope: str, user_id: str, now: float | None = None) -> None:
    """Count one request of ``user_id`` against ``RATE_LIMITS[scope]``; raise :class:`RateLimited` beyond it."""
    config = get_config()["RATE_LIMITS"]
    rate = parse_rate(config[scope])
    if rate is None:
        return
    limit, period = rate
    now = time.time() if now is None else now
    window = int(now // period)
    user = hashlib.sha256(user_id.encode()).hexdigest()[:32]
    key = f"powersync:rate:{scope}:{period}:{user}:{window}"
    cache = caches[config["CACHE"]]
    cache.add(key, 0, timeout=period + 1)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=period + 1)
        count = 1
    if count > limit:
        raise RateLimited(scope, limit, period, max(1, math.ceil((window + 1) * period - now)))


def reset() -> None:
    """Forget all counts (tests): clears the configured cache."""
    caches[get_config()["RATE_LIMITS"]["CACHE"]].clear()
