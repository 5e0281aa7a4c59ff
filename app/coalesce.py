"""Adaptive chunk coalescing: while the process is busy, each stream sends at most one
chunk event per window, and text that arrives sooner leaves with the next one. A
busy server then sends fewer, larger frames instead of falling behind; a lightly
loaded one sends every chunk the moment it arrives.

Busy means the process used more than ``BUSY_CPU`` of a core over the last half
second, or wakes its tasks more than ``BUSY_LAG`` late on average (a monitor that
sleeps a few milliseconds at a time keeps a moving average of how late it wakes).
Below that a server has room to send every chunk on its own, and holding chunks
back would only add delay. Once busy it stays so while it uses more than
``IDLE_CPU``, and for ``HOLD_BUSY`` seconds after the last sign of load: coalescing
lowers the load that switched it on, and flapping on and off would let streams fall
behind each time it is off.
"""

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

# How often held chunks are checked for being due, and load is sampled.
TICK = 0.005
BUSY_CPU = 0.8
IDLE_CPU = 0.5
BUSY_LAG = 0.010
HOLD_BUSY = 2.0
_CPU_PERIOD = 0.5


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
        self.cpu = 0.0
        self._busy_until = 0.0
        self._cpu_at, self._cpu_used = time.monotonic(), time.process_time()
        self._start_task = start_task
        self._sleep = sleep
        self._flush = flush
        # (when due, tie-breaker, stream) for every stream holding chunks back.
        self._due: list[tuple[float, int, Any]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._started = False

    @property
    def enabled(self) -> bool:
        return self.window > 0

    @property
    def busy(self) -> bool:
        return time.monotonic() < self._busy_until

    def current_window(self) -> float:
        """The window in force now: the configured one while busy, else 0."""
        return self.window if self.busy else 0.0

    def start(self) -> None:
        if self.enabled and not self._started:
            self._started = True
            self._start_task(self._run_forever)

    def hold(self, stream: Any, due: float) -> None:
        """``stream`` holds chunks back: flush it at ``due`` (monotonic)."""
        with self._lock:
            heapq.heappush(self._due, (due, next(self._order), stream))

    def _run_forever(self) -> None:
        while True:
            before = time.monotonic()
            self._sleep(TICK)
            now = time.monotonic()
            self._measure(now - before - TICK, now)
            due = []
            with self._lock:
                while self._due and self._due[0][0] <= now + TICK / 2:
                    due.append(heapq.heappop(self._due)[2])
            for stream in due:
                self._flush(stream)

    def _measure(self, late: float, now: float) -> None:
        """Update the load figures with one tick's lateness; renew busy if loaded."""
        self.lag = 0.8 * self.lag + 0.2 * max(late, 0.0)
        if now - self._cpu_at >= _CPU_PERIOD:
            used = time.process_time()
            self.cpu = (used - self._cpu_used) / (now - self._cpu_at)
            self._cpu_at, self._cpu_used = now, used
        busy_above = IDLE_CPU if now < self._busy_until else BUSY_CPU
        if self.cpu > busy_above or self.lag > BUSY_LAG:
            self._busy_until = now + HOLD_BUSY
