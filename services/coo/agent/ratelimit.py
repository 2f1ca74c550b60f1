"""The provider's rate limits, per endpoint and model: requests and tokens per minute.

LLM calls are I/O, so an agent replica holds hundreds at once; the bound that matters is the
provider's. A call beyond it waits here (queued, its task kept alive by heartbeats) rather than
failing. A 429 feeds the limiter: every call to that model waits out the provider's
``Retry-After`` before it is sent, instead of each one hammering the endpoint on its own.

Leaky buckets from ``aiolimiter``; 0 means no limit of that kind.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from coo.common.telemetry import get_logger

log = get_logger("coo.agent.ratelimit")


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int = 0
    tokens_per_minute: int = 0


@dataclass
class _Bucket:
    requests: AsyncLimiter | None
    tokens: AsyncLimiter | None
    tokens_per_minute: int
    blocked_until: float = 0.0
    waiting: int = 0
    throttled: int = field(default=0)


class RateLimiter:
    def __init__(self, default: Limits, per_model: dict[str, Limits] | None = None) -> None:
        self.default = default
        self.per_model = per_model or {}
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, model: str) -> _Bucket:
        bucket = self._buckets.get(model)
        if bucket is None:
            limits = self.per_model.get(model, self.default)
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            bucket = _Bucket(AsyncLimiter(rpm, 60) if rpm > 0 else None,
                             AsyncLimiter(tpm, 60) if tpm > 0 else None, tpm)
            self._buckets[model] = bucket
        return bucket

    async def acquire(self, model: str, tokens: int) -> float:
        """Wait until a call of ``tokens`` (prompt + max output) may go out; returns the seconds waited."""
        bucket = self._bucket(model)
        started = time.monotonic()
        bucket.waiting += 1
        try:
            # a deadline (a 429's Retry-After) that a later 429 may push back: no event to wait for
            while (delay := bucket.blocked_until - time.monotonic()) > 0:  # noqa: ASYNC110 - see above
                await asyncio.sleep(delay)
            if bucket.requests is not None:
                await bucket.requests.acquire()
            if bucket.tokens is not None:
                # One call larger than the whole minute's allowance takes all of it.
                await bucket.tokens.acquire(min(tokens, bucket.tokens_per_minute))
        finally:
            bucket.waiting -= 1
        return time.monotonic() - started

    def throttled(self, model: str, retry_after: float) -> None:
        """The provider answered 429: hold every call to ``model`` for ``retry_after`` seconds."""
        bucket = self._bucket(model)
        until = time.monotonic() + max(0.0, min(retry_after, 300.0))
        if until > bucket.blocked_until:
            bucket.blocked_until = until
            bucket.throttled += 1
            log.warning("the LLM provider is rate limiting; holding calls", model=model,
                        retry_after_s=round(retry_after, 3))

    def snapshot(self) -> dict[str, dict[str, float]]:
        now = time.monotonic()
        return {model: {"waiting": b.waiting, "throttled": b.throttled,
                        "blocked_s": round(max(0.0, b.blocked_until - now), 3)}
                for model, b in self._buckets.items()}


def retry_after_seconds(headers: object, default: float = 1.0) -> float:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds; an HTTP date is not parsed)."""
    get = getattr(headers, "get", None)
    if get is None:
        return default
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return default
