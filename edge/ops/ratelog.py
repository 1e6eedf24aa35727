"""Logging at a bounded rate, for messages a hostile or broken peer can make as often as it likes."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs at most ``burst`` messages per ``period_s`` per key; says how many it held back when it speaks again.

    Counting every event is the job of a metric; this only keeps the log readable and the disk safe.
    """

    def __init__(self, logger: logging.Logger, period_s: float = 60.0, burst: int = 5, max_keys: int = 1024) -> None:
        self.logger = logger
        self.period_s = period_s
        self.burst = burst
        self.max_keys = max_keys
        self._windows: dict[str, tuple[float, int, int]] = {}
        """key -> (window start on the monotonic clock (s), messages logged in it, messages held back)."""

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` has had its ``burst`` in this period; True when logged."""
        now = time.monotonic()
        start, logged, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self.period_s:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[key] = (start, logged, held + 1)
            return False
        if len(self._windows) >= self.max_keys and key not in self._windows:
            self._windows.clear()  # bounded memory: forget old windows rather than grow with hostile keys
        self._windows[key] = (start, logged + 1, 0)
        if held:
            message = f"{message} ({held} like it not logged in the last {self.period_s:g} s)"
        self.logger.log(level, message, *args)
        return True
