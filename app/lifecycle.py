"""Graceful shutdown on SIGTERM.

New chats are refused with ``shutting_down``; streams in flight get up to
``SHUTDOWN_GRACE_SECONDS`` to finish, the rest end with a retryable error; then every
client is disconnected (so it reconnects elsewhere) and the server is told to exit.
"""

import logging
import signal
from collections.abc import Callable

from flask import Flask

from . import socketio

log = logging.getLogger(__name__)

# Time for the last terminal events to leave before connections close.
_FLUSH_SECONDS = 0.5


def drain_on_sigterm(app: Flask, then: Callable[[], None]) -> None:
    """On SIGTERM, drain ``app``'s streams, then call ``then`` to stop the server."""
    relay = app.extensions["relay"]
    grace = app.config["SHUTDOWN_GRACE_SECONDS"]
    draining = False

    def drain() -> None:
        log.info("SIGTERM: draining %d stream(s) for %.0f s", relay.live_count(), grace)
        relay.shutdown(grace)
        socketio.sleep(_FLUSH_SECONDS)
        for sid in relay.connected():
            socketio.server.disconnect(sid)
        socketio.sleep(_FLUSH_SECONDS)
        log.info("drained; exiting")
        then()

    def on_sigterm(signum: int, frame: object) -> None:
        nonlocal draining
        if not draining:
            draining = True
            # A signal handler must return at once; the drain takes its time.
            socketio.start_background_task(drain)

    signal.signal(signal.SIGTERM, on_sigterm)
