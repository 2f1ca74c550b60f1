"""coo.common.retry: attempt counts, backoff bounds (with a fake sleep), the last error raised as
itself, a log line per retry naming its cause, deadlines, the stop event, and Backoff."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback

import pytest
import tenacity

from coo.common.retry import Backoff, Policy, Stopped, describe


class Lost(Exception):
    """A retryable failure."""


class Fatal(Exception):
    """A failure no policy here retries."""


class Recorder:
    """A structlog-like logger: every call as (level, event, fields)."""

    def __init__(self, lines: list | None = None, **bound) -> None:
        self.lines = [] if lines is None else lines
        self.bound = bound

    def bind(self, **fields) -> Recorder:
        return Recorder(self.lines, **self.bound, **fields)

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append((level, event, {**self.bound, **fields}))

    def events(self, event: str) -> list[dict]:
        return [f for _, e, f in self.lines if e == event]


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def policy(**kwargs) -> tuple[Policy, Recorder, Sleeps]:
    log, sleeps = Recorder(), Sleeps()
    values = {"name": "test op", "retry_on": Lost, "attempts": 5, "initial": 0.1, "maximum": 1.0,
              "logger": log, "sleep": sleeps, **kwargs}
    return Policy(**values), log, sleeps


def failing(times: int, exc_type: type[Exception] = Lost, result: str = "done"):
    """An async function that fails ``times`` times, then returns ``result``; counts its calls."""
    calls = []

    async def fn(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) <= times:
            raise exc_type(f"failure {len(calls)}")
        return result
    return fn, calls


# ----------------------------------------------------------------------------- call
async def test_succeeds_after_failures_with_one_log_line_per_retry():
    p, log, sleeps = policy()
    fn, calls = failing(3)
    assert await p.call(fn, "a", k=1) == "done"
    assert len(calls) == 4 and calls[0] == (("a",), {"k": 1}) and calls[-1] == calls[0]
    retries = log.events("retrying")
    assert [r["attempt"] for r in retries] == [1, 2, 3]
    assert [r["error"] for r in retries] == ["Lost: failure 1", "Lost: failure 2", "Lost: failure 3"]
    assert all(r["operation"] == "test op" for r in retries)
    assert all(level == "warning" for level, _, _ in log.lines)
    assert len(sleeps.waits) == 3 and log.events("retries exhausted") == []


async def test_first_success_neither_sleeps_nor_logs():
    p, log, sleeps = policy()
    fn, calls = failing(0)
    assert await p.call(fn) == "done"
    assert len(calls) == 1 and log.lines == [] and sleeps.waits == []


async def test_gives_up_after_the_attempts_and_raises_the_last_error_itself():
    p, log, sleeps = policy(attempts=4)
    fn, calls = failing(100)
    with pytest.raises(Lost) as raised:
        await p.call(fn)
    assert not isinstance(raised.value, tenacity.RetryError)
    assert str(raised.value) == "failure 4" and len(calls) == 4
    assert "fn" in [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]   # its own traceback
    assert [r["attempt"] for r in log.events("retrying")] == [1, 2, 3] and len(sleeps.waits) == 3
    (gave_up,) = log.events("retries exhausted")
    assert gave_up["attempts"] == 4 and gave_up["error"] == "Lost: failure 4"


async def test_one_attempt_means_no_retry_but_the_give_up_is_logged():
    p, log, sleeps = policy(attempts=1)
    fn, calls = failing(1)
    with pytest.raises(Lost):
        await p.call(fn)
    assert len(calls) == 1 and sleeps.waits == [] and len(log.events("retries exhausted")) == 1


async def test_an_error_it_does_not_retry_is_raised_at_once():
    p, log, sleeps = policy()
    fn, calls = failing(1, Fatal)
    with pytest.raises(Fatal):
        await p.call(fn)
    assert len(calls) == 1 and log.lines == [] and sleeps.waits == []

    picky, log, _ = policy(retry_on=Exception, retry_if=lambda exc: "2" not in str(exc))
    fn, calls = failing(5, Fatal)
    with pytest.raises(Fatal, match="failure 2"):       # retried the first, not the second
        await picky.call(fn)
    assert len(calls) == 2 and len(log.events("retrying")) == 1


async def test_try_again_retries_without_an_error_of_retry_on():
    p, _, _ = policy()
    state = {"n": 0}

    async def fn():
        state["n"] += 1
        if state["n"] < 3:
            raise tenacity.TryAgain
        return state["n"]
    assert await p.call(fn) == 3


async def test_a_callable_returning_an_awaitable_is_awaited_on_every_try():
    p, _, _ = policy()
    fn, calls = failing(2)
    assert await p.call(lambda: fn()) == "done" and len(calls) == 3  # noqa: PLW0108 - a callable, not a coroutine function


async def test_the_level_of_the_retry_lines_is_the_policy_s():
    p, log, _ = policy(level="debug")
    fn, _ = failing(2)
    await p.call(fn)
    assert [level for level, e, _ in log.lines if e == "retrying"] == ["debug", "debug"]


# --------------------------------------------------------------------------- waits
@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
async def test_backoff_is_exponential_capped_and_jittered_within_bounds(jitter):
    p, log, sleeps = policy(attempts=9, initial=0.1, maximum=1.0, jitter=jitter)
    for _ in range(20):
        fn, _ = failing(100)
        with pytest.raises(Lost):
            await p.call(fn)
    ceilings = [min(1.0, 0.1 * 2 ** n) for n in range(8)]      # 0.1 0.2 0.4 0.8 1 1 1 1
    assert len(sleeps.waits) == 20 * 8
    for i, wait in enumerate(sleeps.waits):
        ceiling = ceilings[i % 8]
        assert (1 - jitter) * ceiling - 1e-12 <= wait <= ceiling + 1e-12, (i, wait)
    assert [r["delay_seconds"] for r in log.events("retrying")][:8] == [round(w, 4) for w in sleeps.waits[:8]]
    if jitter == 0:
        assert sleeps.waits[:8] == pytest.approx(ceilings)
    else:
        assert len({round(w, 9) for w in sleeps.waits}) > 20         # really random


def test_no_initial_wait_means_retrying_at_once():
    p, _, _ = policy(initial=0.0)
    assert [p.delay(n) for n in range(1, 10)] == [0.0] * 9


async def test_a_policy_without_a_fake_sleep_really_waits():
    p, _, _ = policy(initial=0.02, maximum=0.02, jitter=0.0)
    p = dataclasses.replace(p, sleep=None)
    fn, _ = failing(2)
    started = time.monotonic()
    await p.call(fn)
    assert time.monotonic() - started >= 0.039


async def test_deadline_stops_retrying():
    p, log, _ = policy(attempts=None, deadline=0.15, initial=0.02, maximum=0.02, jitter=0.0, sleep=None)
    fn, calls = failing(10_000)
    started = time.monotonic()
    with pytest.raises(Lost):
        await p.call(fn)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 1.5
    assert 3 <= len(calls) <= 9 and len(log.events("retries exhausted")) == 1


async def test_no_wait_goes_past_the_deadline():
    p, log, _ = policy(attempts=None, deadline=0.1, initial=10.0, maximum=10.0, jitter=0.0, sleep=None)
    fn, calls = failing(10_000)
    started = time.monotonic()
    with pytest.raises(Lost):
        await p.call(fn)
    assert time.monotonic() - started < 1.0 and len(calls) == 2                 # one try at the deadline
    assert log.events("retrying")[0]["delay_seconds"] <= 0.1


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError):
        Policy("x", attempts=0)
    with pytest.raises(ValueError):
        Policy("x", jitter=1.5)
    with pytest.raises(ValueError):
        Policy("x", initial=-1)


# ----------------------------------------------------------------------- block form
async def test_block_form_retries_and_reraises_the_last_error():
    p, log, sleeps = policy(attempts=3)
    tries = 0
    with pytest.raises(Lost, match="try 3"):
        async for attempt in p.retrying():
            with attempt:
                tries += 1
                raise Lost(f"try {tries}")
    assert tries == 3 and len(sleeps.waits) == 2
    assert [r["attempt"] for r in log.events("retrying")] == [1, 2] and len(log.events("retries exhausted")) == 1

    tries = 0
    async for attempt in p.retrying():
        with attempt:
            tries += 1
            if tries < 2:
                raise Lost("once")
    assert tries == 2


async def test_a_stop_event_cuts_the_wait_short_and_keeps_the_cause():
    stop = asyncio.Event()
    p, log, _ = policy(attempts=None, initial=10.0, maximum=10.0, sleep=None)
    tries = 0

    async def connect():
        nonlocal tries
        tries += 1
        asyncio.get_running_loop().call_later(0.05, stop.set)
        raise Lost("refused")
    started = time.monotonic()
    with pytest.raises(Stopped) as raised:
        await p.retrying(stop_event=stop)(connect)
    assert time.monotonic() - started < 2.0 and tries == 1
    assert isinstance(raised.value.__cause__, Lost) and str(raised.value.__cause__) == "refused"
    assert len(log.events("retrying")) == 1


async def test_a_stop_event_already_set_stops_after_the_failed_try():
    stop = asyncio.Event()
    stop.set()
    p, _, _ = policy(attempts=None)
    fn, calls = failing(100)
    with pytest.raises(Stopped) as raised:
        await p.retrying(stop_event=stop)(fn)
    assert len(calls) == 1 and isinstance(raised.value.__cause__, Lost)


# --------------------------------------------------------------------------- Backoff
async def test_backoff_counts_failures_in_a_row_and_resets():
    p, log, sleeps = policy(attempts=None, initial=0.2, maximum=5.0, jitter=0.0)
    backoff = p.backoff()
    assert isinstance(backoff, Backoff)
    for i in range(6):
        await backoff.wait(Lost(f"fetch {i}"))
    assert sleeps.waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert [r["error"] for r in log.events("retrying")][-1] == "Lost: fetch 5"
    backoff.reset()
    await backoff.wait(Lost("again"))
    assert sleeps.waits[-1] == pytest.approx(0.2) and log.events("retrying")[-1]["attempt"] == 1


def test_backoff_with_a_limit_raises_the_error_once_exhausted():
    p, log, _ = policy(attempts=3)
    backoff = p.backoff()
    backoff.failed(Lost("1"))
    backoff.failed(Lost("2"))
    third = Lost("3")
    with pytest.raises(Lost) as raised:
        backoff.failed(third)
    assert raised.value is third and log.events("retries exhausted")[0]["error"] == "Lost: 3"


async def test_bound_fields_are_on_every_line():
    p, log, _ = policy(attempts=2)
    fn, _ = failing(5)
    with pytest.raises(Lost):
        await p.bind(subject="coo.budget.reserve").call(fn)
    assert [f["subject"] for _, _, f in log.lines] == ["coo.budget.reserve", "coo.budget.reserve"]
    assert p.logger is log                     # the policy itself is unchanged


def test_describe():
    assert describe(Lost("x")) == "Lost: x" and describe(Lost()) == "Lost" and describe(None) == ""
