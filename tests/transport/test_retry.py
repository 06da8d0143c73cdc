"""retry_with_backoff: retries what it is told to, gives up with the caller's error at the
deadline, lets everything else through, and stops when its owner closes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from foedus.transport.retry import RetryStopped, retry_with_backoff


class Flaky(Exception):
    pass


def failing(
    times: int, exc: Exception, result: str = "ok"
) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return result

    return calls, attempt


def give_up(exc: BaseException) -> RuntimeError:
    return RuntimeError(f"gave up: {exc}")


async def test_returns_the_result_once_an_attempt_succeeds() -> None:
    calls, attempt = failing(2, Flaky("down"))
    retried: list[BaseException] = []
    result = await retry_with_backoff(attempt, retry_on=Flaky, timeout=5, give_up=give_up,
                                      on_retry=retried.append, first_delay=0.01)
    assert result == "ok"
    assert len(calls) == 3
    assert len(retried) == 2


async def test_gives_up_with_the_callers_error_when_the_deadline_passes() -> None:
    calls, attempt = failing(1000, Flaky("still down"))
    with pytest.raises(RuntimeError, match="gave up: still down") as info:
        await retry_with_backoff(attempt, retry_on=Flaky, timeout=0.1, give_up=give_up,
                                 first_delay=0.01, max_delay=0.02)
    assert isinstance(info.value.__cause__, Flaky)
    assert 1 < len(calls) < 1000


async def test_a_non_retryable_error_gives_up_at_once() -> None:
    calls, attempt = failing(1, Flaky("refused"))
    with pytest.raises(RuntimeError, match="refused"):
        await retry_with_backoff(attempt, retry_on=Flaky, timeout=5, give_up=give_up,
                                 should_retry=lambda exc: "refused" not in str(exc))
    assert len(calls) == 1


async def test_other_exceptions_propagate_unchanged() -> None:
    calls, attempt = failing(1, KeyError("bug"))
    with pytest.raises(KeyError):
        await retry_with_backoff(attempt, retry_on=Flaky, timeout=5, give_up=give_up)
    assert len(calls) == 1


async def test_stops_before_the_next_attempt_once_the_owner_is_closed() -> None:
    calls, attempt = failing(1000, Flaky("down"))
    with pytest.raises(RetryStopped):
        await retry_with_backoff(attempt, retry_on=Flaky, timeout=5, give_up=give_up,
                                 stopped=lambda: len(calls) >= 2, first_delay=0.01)
    assert len(calls) == 2
