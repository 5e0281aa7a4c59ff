"""Streams wait out their coalescing window here, and wake together on a shared clock.

After sending a chunk event, a stream's generation waits until its window has passed
before it reads the model again; whatever arrived meanwhile then leaves as one event.
The waits end on the ticks of one clock, half a window apart, each stream at the tick
nearest its window's end (so a window lasts from 3/4 to 5/4 of its length, its length
on average). A tick is an event shared by every stream due in it, set by one ticker
task: waking a few hundred streams costs one timer, and their reads and writes run
back to back, which costs the process, the kernel and the clients one wake-up for all
of them instead of one each. The ticker also measures how late it wakes, the
server's loop lag (a metric).
"""

import math
import threading
import time
from collections.abc import Callable
from typing import Any

# The clock's tick for a window: half of it, so each window ends within a quarter of
# its length of where it should.
TICKS_PER_WINDOW = 2
MIN_TICK = 0.001


class Pacer:
    def __init__(
        self,
        start_task: Callable[..., Any],
        sleep: Callable[[float], Any],
        make_event: Callable[[], Any],
        window: float,
    ):
        self.lag = 0.0
        self.tick = max(window / TICKS_PER_WINDOW, MIN_TICK)
        self._start_task = start_task
        self._sleep = sleep
        self._make_event = make_event
        # Tick number -> the event the streams due in that tick wait on.
        self._waiting: dict[int, Any] = {}
        self._next_tick = 0
        self._lock = threading.Lock()
        self._started = False

    def wait_until(self, moment: float) -> None:
        """Block the calling task until the tick nearest ``moment`` (monotonic)."""
        tick = round(moment / self.tick)
        if tick * self.tick <= time.monotonic():
            return
        with self._lock:
            if self._started and tick < self._next_tick:
                return  # that tick has been woken already
            event = self._waiting.get(tick)
            if event is None:
                event = self._waiting[tick] = self._make_event()
            if not self._started:
                self._started = True
                self._next_tick = math.floor(time.monotonic() / self.tick)
                self._start_task(self._run_forever)
        event.wait()

    def _run_forever(self) -> None:
        while True:
            before = time.monotonic()
            # To the next tick of the clock, not a tick from now: the streams due at
            # it were promised that moment.
            pause = (math.floor(before / self.tick) + 1) * self.tick - before
            self._sleep(pause)
            now = time.monotonic()
            self.lag = 0.8 * self.lag + 0.2 * max(now - before - pause, 0.0)
            current = math.floor(now / self.tick + 1e-9)
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
