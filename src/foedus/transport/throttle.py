"""A logger of refusals that a flood cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import time

__all__ = ["ThrottledLog"]


class ThrottledLog:
    """Logs at most ``per_second`` warnings a second. Hostile input can arrive by the thousand
    each second; every refusal is still counted by its caller, and the lines held back here are
    summed up in the next line logged, so nothing passes unseen and the log stays readable."""

    def __init__(self, logger: logging.Logger, per_second: int) -> None:
        self.logger = logger
        self.per_second = per_second
        self._window = 0.0
        self._logged = 0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._logged = now, 0
        if self._logged >= self.per_second:
            self._held += 1
            return
        self._logged += 1
        more = f" (and {self._held} more refusals not logged)" if self._held else ""
        self._held = 0
        self.logger.warning(message + "%s", *args, more)
