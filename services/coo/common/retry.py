"""Retries, one way everywhere: tenacity drives the loop, a :class:`Policy` says how.

A policy retries the errors it names (``retry_on``, narrowed by ``retry_if``), waits an
exponential backoff with jitter and a cap between tries (``initial`` doubling up to ``maximum``;
``jitter`` is the share of each wait drawn at random), gives up after ``attempts`` tries and/or
``deadline`` seconds, logs every retry with its cause through structlog, and raises the last error
itself when it gives up (logged as "retries exhausted"; never swallowed, never a
``tenacity.RetryError``)::

    CAS = Policy("ledger write", retry_on=Conflict, attempts=20, initial=0.0, level="debug")
    rev = await CAS.call(write, key, data)          # write(key, data) until it succeeds

    async for attempt in Policy("connect", attempts=None, maximum=5.0).retrying(stop_event=stop):
        with attempt:                               # tenacity's own block form
            bus = await Bus.connect(...)            # a set ``stop`` ends the wait: Stopped is raised

Loops that run for ever and pace themselves after a failure (a consumer's fetch loop) keep their
own loop and take the waits and the log lines from a :class:`Backoff`::

    backoff = Policy("consume", attempts=None, initial=0.2, maximum=5.0).backoff()
    ...  except Exception as exc: await backoff.wait(exc)   # and backoff.reset() after a success

:meth:`Policy.call` makes its first try without tenacity: an ``AsyncRetrying`` call costs about
25 µs even when the first try succeeds (it inspects each of its callbacks on every attempt), which
a compare-and-set that nearly always succeeds at once should not pay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
import tenacity

T = TypeVar("T")

_log = structlog.get_logger("coo.retry")


class Stopped(Exception):
    """The stop event was set while waiting to retry (``__cause__``: the error that was retried)."""


def describe(exc: BaseException | None) -> str:
    """An error as a log field: ``Type: message``."""
    if exc is None:
        return ""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class Policy:
    """How to retry one kind of operation (see the module docstring). Cheap to keep at module level."""

    name: str                                   # what is retried, in the log lines
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception
    retry_if: Callable[[BaseException], bool] | None = None   # further test on an error of retry_on
    attempts: int | None = 5                    # tries in all (None: no limit)
    deadline: float | None = None               # seconds from the first try (None: no limit)
    initial: float = 0.1                        # the longest first wait; 0: retry at once
    maximum: float = 5.0                        # the cap of a wait
    jitter: float = 1.0                         # share of a wait drawn at random (1: full jitter, 0: none)
    level: str = "warning"                      # of the retry lines ("debug" for expected races)
    logger: Any = field(default=None, compare=False)   # a structlog logger (default "coo.retry")
    sleep: Callable[[float], Awaitable[Any]] | None = field(default=None, compare=False)  # tests: a fake

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial < 0 or self.maximum < 0 or not 0.0 <= self.jitter <= 1.0:
            raise ValueError("waits must not be negative and jitter must lie in [0, 1]")

    def bind(self, **fields: Any) -> Policy:
        """This policy with ``fields`` on its log lines too (e.g. the subject of a request)."""
        return dataclasses.replace(self, logger=(self.logger or _log).bind(**fields))

    # ------------------------------------------------------------------ the parts
    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1 = the first): the exponential
        ``min(maximum, initial * 2 ** (failures - 1))`` less a random share ``jitter`` of it."""
        if self.initial <= 0 or failures < 1:
            return 0.0
        ceiling = min(self.maximum, self.initial * 2.0 ** min(failures - 1, 64))
        return ceiling * (1.0 - self.jitter * random.random())  # noqa: S311 - jitter, not a secret

    def _wait(self, failures: int, start: float) -> float:
        """:meth:`delay`, cut to what is left of the deadline: the last try comes at the deadline."""
        delay = self.delay(failures)
        if self.deadline is not None:
            delay = max(0.0, min(delay, start + self.deadline - time.monotonic()))
        return delay

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, tenacity.TryAgain):
            return True
        return isinstance(exc, self.retry_on) and (self.retry_if is None or self.retry_if(exc))

    def _exhausted(self, tries: int, start: float) -> bool:
        return bool((self.attempts is not None and tries >= self.attempts)
                    or (self.deadline is not None and time.monotonic() - start >= self.deadline))

    def _log(self, level: str, event: str, **fields: Any) -> None:
        getattr(self.logger or _log, level)(event, operation=self.name, **fields)

    def _retrying_line(self, attempt: int, delay: float, exc: BaseException | None) -> None:
        self._log(self.level, "retrying", attempt=attempt, delay_seconds=round(delay, 4), error=describe(exc))

    def _gave_up_line(self, attempts: int, start: float, exc: BaseException | None) -> None:
        self._log("warning", "retries exhausted", attempts=attempts,
                  elapsed_seconds=round(time.monotonic() - start, 3), error=describe(exc))

    # ----------------------------------------------------------------- the loops
    def retrying(self, *, stop_event: asyncio.Event | None = None) -> tenacity.AsyncRetrying:
        """A ``tenacity.AsyncRetrying`` for this policy: ``await r(fn, *args)`` or
        ``async for attempt in r: with attempt: ...``. ``stop_event`` ends the retrying: no try
        starts once it is set, and a wait it cuts short raises :class:`Stopped`."""
        return self._tenacity(stop_event, 0, time.monotonic())

    def _tenacity(self, stop_event: asyncio.Event | None, done: int, start: float) -> tenacity.AsyncRetrying:
        """``done``: tries already made (and failed) since ``start``."""
        last: list[BaseException | None] = [None]

        def stop(state: tenacity.RetryCallState) -> bool:
            return self._exhausted(state.attempt_number + done, start) or bool(stop_event and stop_event.is_set())

        def wait(state: tenacity.RetryCallState) -> float:
            return self._wait(state.attempt_number + done, start)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            last[0] = state.outcome.exception() if state.outcome else None
            self._retrying_line(state.attempt_number + done, state.upcoming_sleep, last[0])

        def gave_up(state: tenacity.RetryCallState) -> Any:
            exc = state.outcome.exception() if state.outcome else None
            if stop_event is not None and stop_event.is_set():
                raise Stopped(f"{self.name}: stopped while retrying") from exc
            self._gave_up_line(state.attempt_number + done, start, exc)
            return state.outcome.result() if state.outcome else None    # raises the last error

        async def sleep(seconds: float) -> None:
            if stop_event is None:
                await (self.sleep or asyncio.sleep)(seconds)
                return
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=seconds)
            except TimeoutError:
                return
            raise Stopped(f"{self.name}: stopped while retrying") from last[0]

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self.retryable), stop=stop, wait=wait,
            before_sleep=before_sleep, retry_error_callback=gave_up, sleep=sleep)

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` until it succeeds, as the policy says. The first try runs
        outside tenacity (see the module docstring); the retries in ``tenacity.AsyncRetrying``."""
        start = time.monotonic()
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            if not self.retryable(exc):
                raise
            if self._exhausted(1, start):
                self._gave_up_line(1, start, exc)
                raise
            delay = self._wait(1, start)
            self._retrying_line(1, delay, exc)
        if delay > 0:
            await (self.sleep or asyncio.sleep)(delay)

        async def again() -> T:        # an ``async def``: tenacity awaits only coroutine functions
            return await fn(*args, **kwargs)

        return await self._tenacity(None, 1, start)(again)

    def backoff(self) -> Backoff:
        """Waits and log lines for a loop that keeps going itself (see :class:`Backoff`)."""
        return Backoff(self)


class Backoff:
    """Failures in a row of a long-running loop: :meth:`failed` logs one and returns the wait,
    :meth:`wait` also sleeps it, :meth:`reset` after a success. The policy's ``attempts`` and
    ``deadline`` (counted from the first failure in a row) make :meth:`failed` re-raise the error
    once exhausted; with neither, it never gives up."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.failures = 0
        self._since = 0.0

    def reset(self) -> None:
        self.failures = 0

    def failed(self, exc: BaseException | None = None) -> float:
        if self.failures == 0:
            self._since = time.monotonic()
        self.failures += 1
        p = self.policy
        if p._exhausted(self.failures, self._since):
            p._gave_up_line(self.failures, self._since, exc)
            if exc is not None:
                raise exc
            raise RuntimeError(f"{p.name}: retries exhausted")
        delay = p._wait(self.failures, self._since)
        p._retrying_line(self.failures, delay, exc)
        return delay

    async def wait(self, exc: BaseException | None = None) -> None:
        delay = self.failed(exc)
        if delay > 0:
            await (self.policy.sleep or asyncio.sleep)(delay)

