"""A flood of refusals is logged as a bounded number of lines, and none passes unmentioned."""

from __future__ import annotations

import logging

import pytest

from foedus.transport import throttle
from foedus.transport.throttle import ThrottledLog


def test_a_burst_logs_per_second_lines_and_the_next_line_counts_the_rest(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(throttle, "time", type("Clock", (), {"monotonic": lambda: clock[0]}))
    log = ThrottledLog(logging.getLogger("test.throttle"), per_second=3)
    with caplog.at_level(logging.WARNING, "test.throttle"):
        for i in range(50):
            log.warning("refused %d", i)
        assert [r.getMessage() for r in caplog.records] == [
            "refused 0", "refused 1", "refused 2"]
        clock[0] += 1.0  # the next second
        log.warning("refused %d", 50)
    assert caplog.records[-1].getMessage() == "refused 50 (and 47 more refusals not logged)"
    assert len(caplog.records) == 4
