"""Retrying an async step with exponential backoff until a deadline.

The hub clients (gRPC, HTTPS) wait the same way for a hub that is (re)starting: when they
re-open a broken subscription, retry a publish, or wait for the first handshake. One helper keeps
the timing (0.1 s, doubling, capped) and the "give up with a clear error" rule identical for all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class RetryStopped(Exception):
    """The caller's ``stopped`` check turned true (e.g. the subscription was closed) before an
    attempt succeeded."""


def _always(exc: BaseException) -> bool:
    return True


async def retry_with_backoff(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    timeout: float,
    give_up: Callable[[BaseException], BaseException],
    should_retry: Callable[[BaseException], bool] = _always,
    on_retry: Callable[[BaseException], None] | None = None,
    stopped: Callable[[], bool] | None = None,
    first_delay: float = 0.1,
    max_delay: float = 2.0,
) -> T:
    """Await ``attempt()`` until it succeeds and return its result.

    An exception of type ``retry_on`` that ``should_retry`` accepts is retried after a sleep that
    starts at ``first_delay`` and doubles up to ``max_delay``; ``on_retry`` sees it first (for a
    log line). When the next sleep would end past ``timeout`` seconds from the call, or the
    exception is not retryable, ``give_up(exc)`` is raised from it. Other exceptions propagate
    unchanged. ``stopped`` is checked before every attempt; once it is true the helper raises
    :class:`RetryStopped`, so a closed owner stops retrying at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = first_delay
    while True:
        if stopped is not None and stopped():
            raise RetryStopped
        try:
            return await attempt()
        except retry_on as exc:
            if not should_retry(exc) or loop.time() + delay > deadline:
                raise give_up(exc) from exc
            if on_retry is not None:
                on_retry(exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
