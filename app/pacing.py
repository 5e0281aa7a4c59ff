"""Streams wait out their coalescing window here, and wake a tick's worth at a time.

After sending a chunk event, a stream's generation waits until its window has passed
before it reads the model again; whatever arrived meanwhile then leaves as one event.
A wait is an event per tick (5 ms) shared by every stream due in it, set by one ticker
task: waking a few hundred streams costs one timer, not a few hundred. The ticker also
measures how late it wakes, the server's loop lag (a metric).
"""

import math
import threading
import time
from collections.abc import Callable
from typing import Any

TICK = 0.005


class Pacer:
    def __init__(
        self,
        start_task: Callable[..., Any],
        sleep: Callable[[float], Any],
        make_event: Callable[[], Any],
    ):
        self.lag = 0.0
        self._start_task = start_task
        self._sleep = sleep
        self._make_event = make_event
        # Tick number -> the event the streams due in that tick wait on.
        self._waiting: dict[int, Any] = {}
        self._next_tick = 0
        self._lock = threading.Lock()
        self._started = False

    def wait_until(self, moment: float) -> None:
        """Block the calling task until ``moment`` (monotonic), to a tick."""
        if moment <= time.monotonic():
            return
        tick = math.ceil(moment / TICK)
        with self._lock:
            if self._started and tick < self._next_tick:
                return  # that tick has been woken already
            event = self._waiting.get(tick)
            if event is None:
                event = self._waiting[tick] = self._make_event()
            if not self._started:
                self._started = True
                self._next_tick = math.floor(time.monotonic() / TICK)
                self._start_task(self._run_forever)
        event.wait()

    def _run_forever(self) -> None:
        while True:
            before = time.monotonic()
            self._sleep(TICK)
            now = time.monotonic()
            self.lag = 0.8 * self.lag + 0.2 * max(now - before - TICK, 0.0)
            current = math.floor(now / TICK)
            due = []
            with self._lock:
                # Every tick up to now, including any the ticker slept past.
                for tick in range(self._next_tick, current + 1):
                    event = self._waiting.pop(tick, None)
                    if event is not None:
                        due.append(event)
                self._next_tick = current + 1
            for event in due:
                event.set()
