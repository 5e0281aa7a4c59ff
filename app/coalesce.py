"""Adaptive chunk coalescing: while the process is busy, a stream's chunks that arrive
within a short window leave as one event, so a loaded server sends fewer, larger frames
instead of falling behind. A lightly loaded server sends every chunk at once.

Busy means the event loop (or the thread scheduler) wakes tasks late: a monitor sleeps
a few milliseconds at a time and keeps a moving average of how late it wakes.
"""

import threading
import time
from collections.abc import Callable
from typing import Any

_TICK = 0.01
# Average wake-up lateness above which the process counts as busy.
_BUSY_LAG = 0.002


class Coalescer:
    def __init__(
        self,
        window: float,
        start_task: Callable[..., Any],
        sleep: Callable[[float], Any],
        flush: Callable[[Any], None],
    ):
        self.window = window
        self.lag = 0.0
        self._start_task = start_task
        self._sleep = sleep
        self._flush = flush
        # Streams holding chunks, with when each must be sent at the latest.
        self._due: dict[Any, float] = {}
        self._lock = threading.Lock()
        self._started = False

    @property
    def enabled(self) -> bool:
        return self.window > 0

    @property
    def busy(self) -> bool:
        return self.lag > _BUSY_LAG

    def start(self) -> None:
        if self.enabled and not self._started:
            self._started = True
            self._start_task(self._monitor_forever)
            self._start_task(self._flush_forever)

    def hold(self, stream: Any) -> None:
        """``stream`` has chunks held back; send them within the window."""
        with self._lock:
            self._due.setdefault(stream, time.monotonic() + self.window)

    def _monitor_forever(self) -> None:
        while True:
            before = time.monotonic()
            self._sleep(_TICK)
            late = max(time.monotonic() - before - _TICK, 0.0)
            self.lag = 0.8 * self.lag + 0.2 * late

    def _flush_forever(self) -> None:
        while True:
            self._sleep(self.window / 2)
            now = time.monotonic()
            with self._lock:
                due = [s for s, deadline in self._due.items() if deadline <= now]
                for stream in due:
                    del self._due[stream]
            for stream in due:
                self._flush(stream)
