"""Calls that block their thread (SQLite's, a local classifier's), run so that the
event loop goes on meanwhile.

Under gevent and eventlet every greenlet shares one thread: a call that blocks it in
C stops every stream of the process. Such a call goes to a small pool of real
threads, and only the greenlet that made it waits. Under threading each request has
its thread already, and the call runs in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Real threads for blocking calls: enough for a few writes at once (SQLite takes one
# writer at a time anyway) without a thread per waiting greenlet.
POOL_SIZE = 8


class Offload:
    """Runs a blocking call off the event loop of ``async_mode``."""

    def __init__(self, async_mode: str):
        self.async_mode = async_mode
        self._pool: Any = None

    def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)``, its result or its exception, with the event
        loop running meanwhile."""
        if self.async_mode == "gevent":
            if self._pool is None:
                from gevent.threadpool import ThreadPool

                self._pool = ThreadPool(POOL_SIZE)
            return self._pool.apply(call, args, kwargs)
        if self.async_mode == "eventlet":
            from eventlet import tpool

            return tpool.execute(call, *args, **kwargs)
        return call(*args, **kwargs)
