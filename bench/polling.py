"""Waiting on a condition with a deadline, for the benchmark scripts that drive processes
(``bench/federation.py``, ``bench/vs_flower_federation/run.py``): they poll what another
process does (a port open, a job's state), and a poll must end in an error naming what never
happened, never hang."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(check: Callable[[], Any], seconds: float, what: str, every: float = 0.05) -> Any:
    """``check()``'s first truthy value, polled every ``every`` seconds; after ``seconds``
    without one, :class:`RuntimeError` naming ``what``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)  # between polls of a condition, bounded by the deadline
    raise RuntimeError(f"timed out after {seconds}s waiting for {what}")
