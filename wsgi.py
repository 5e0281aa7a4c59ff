"""The app as gunicorn loads it (``wsgi:app``), or served alone: ``python wsgi.py``.

The async mode follows the server that runs this module. Under gunicorn it is the
worker's: the gevent and eventlet workers patch the standard library before they load
the app, gthread and sync patch nothing (threading). Under ``python wsgi.py`` it is
``ASYNC_MODE`` (gevent by default), patched here before anything else is imported.
An ``ASYNC_MODE`` that contradicts the worker stops the server with one line.
"""

import gc
import os
import sys
from typing import NoReturn

MODES = ("gevent", "eventlet", "threading")
# The gunicorn workers that run each mode, for the message that names a mismatch.
WORKERS = {"gevent": "-k gevent", "eventlet": "-k eventlet", "threading": "-k gthread"}


def patched_by(library: str) -> bool:
    """Whether ``library`` (gevent or eventlet) has patched the standard library."""
    if library not in sys.modules:
        return False  # never imported, so it patched nothing
    if library == "gevent":
        from gevent import monkey

        return monkey.is_module_patched("socket")
    from eventlet import patcher

    return patcher.is_monkey_patched("socket")


def worker_mode() -> str | None:
    """The async mode of the gunicorn worker loading this module; None without one."""
    if "gunicorn" not in sys.modules:
        return None
    for library, module in (("gevent", "ggevent"), ("eventlet", "geventlet")):
        # With --preload the master loads the app, before its gevent worker patches
        # anything; it has imported that worker's module by then.
        if patched_by(library) or f"gunicorn.workers.{module}" in sys.modules:
            return library
    return "threading"


def refuse_to_start(message: str) -> NoReturn:
    """Stop with ``message`` as one line on stderr, and no traceback."""
    if "gunicorn" in sys.modules:
        from gunicorn.errors import AppImportError

        # gunicorn prints it alone and halts ("App failed to load", exit 4); any other
        # exit of a worker would only make it start the next one.
        raise AppImportError(message)
    print(message, file=sys.stderr)
    sys.exit(1)


def choose_async_mode() -> str:
    """The mode to run in; the server stops when ``ASYNC_MODE`` cannot be it."""
    configured = os.environ.get("ASYNC_MODE") or None
    if configured is not None and configured not in MODES:
        refuse_to_start(f"ASYNC_MODE={configured} is not one of {', '.join(MODES)}")
    worker = worker_mode()
    if worker is None:
        return configured or "gevent"
    if configured is not None and configured != worker:
        refuse_to_start(
            f"ASYNC_MODE={configured} contradicts gunicorn's worker, which runs "
            f"{worker} ({WORKERS[worker]}): unset ASYNC_MODE or run "
            f"{WORKERS[configured]}"
        )
    return worker


ASYNC_MODE = choose_async_mode()
# The app's config reads it: the app runs in the mode the server runs.
os.environ["ASYNC_MODE"] = ASYNC_MODE
# Patch the standard library before anything imports socket or threading.
if ASYNC_MODE == "gevent":
    import gevent
    from gevent import monkey

    if not patched_by("gevent"):
        monkey.patch_all()
    # gevent's default keeps, for debugging, the stack each greenlet was spawned
    # from: with four greenlets per idle connection that was 5 of its 69 KB.
    gevent.config.track_greenlet_tree = False
elif ASYNC_MODE == "eventlet" and not patched_by("eventlet"):
    import eventlet

    eventlet.monkey_patch()

import logging  # noqa: E402  (it imports threading)

from app import create_app, socketio  # noqa: E402

app = create_app()
logging.getLogger("wsgi").info(
    "async mode %s (%s)",
    socketio.async_mode,
    "gunicorn's worker" if worker_mode() else "ASYNC_MODE or its default",
)
# The cyclic collector stops the process while it walks the heap, and clients feel
# each pause as late tokens. What is loaded by now lives as long as the process:
# leave it out of every collection. And collect less often: under load the heap is
# mostly connections and answers kept for resume, not garbage, and the default
# thresholds walked all of it every few seconds (~150 ms at 1000 streams).
gc.freeze()
gc.set_threshold(20_000, 20, 50)

if __name__ == "__main__":
    from app.lifecycle import drain_on_sigterm

    drain_on_sigterm(app, lambda: os._exit(0))
    socketio.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        allow_unsafe_werkzeug=True,
    )
