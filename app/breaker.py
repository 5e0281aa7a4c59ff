"""Fail fast while the upstream is down, instead of piling up waiting clients."""

import threading
import time


class CircuitBreaker:
    """Opens after ``threshold`` upstream failures in a row. Once ``cooldown`` seconds
    have passed it lets one trial request through (another each further cooldown) and
    closes on the first success."""

    def __init__(self, threshold: int, cooldown: float):
        self.threshold = threshold
        self.cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    def allow(self) -> float | None:
        """None when a request may go upstream, else seconds until one may."""
        if self.threshold <= 0:
            return None
        with self._lock:
            if self._opened_at is None:
                return None
            now = time.monotonic()
            waited = now - self._opened_at
            if waited < self.cooldown:
                return self.cooldown - waited
            # This request is the trial; the next one waits for its outcome.
            self._opened_at = now
            return None

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold:
                self._opened_at = time.monotonic()
