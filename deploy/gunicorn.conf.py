"""gunicorn settings: one worker, because Socket.IO sessions live in its memory.

Scale out with more single-worker processes behind a sticky load balancer instead.
ASYNC_MODE=gevent (default) uses the gevent worker, ASYNC_MODE=eventlet the eventlet
worker, and ASYNC_MODE=threading gthread with one thread per connection. wsgi.py runs
the app in the mode of the worker that loads it (also one given with -k).
"""

import os
import signal

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
workers = 1
# Open connections one worker accepts (gunicorn's default of 1000 refuses the rest).
# The app takes 90 % of them (of the threads for gthread) and refuses more with
# server_full (MAX_CONNECTIONS), so that /healthz always finds a socket.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))
mode = os.environ.get("ASYNC_MODE") or "gevent"
worker_class = mode if mode in ("eventlet", "gevent") else "gthread"
# A WebSocket holds its thread for as long as it is open. Set whatever the mode, so
# that a worker class given on the command line (-k gthread) gets them too; the
# gevent and eventlet workers ignore it.
threads = int(os.environ.get("THREADS", "200"))
# Streams are long-lived; the worker heartbeat, not the request, is what timeout bounds.
timeout = 60
# The app drains its streams for SHUTDOWN_GRACE_SECONDS; gunicorn waits a little longer.
graceful_timeout = int(float(os.environ.get("SHUTDOWN_GRACE_SECONDS", "20"))) + 10
accesslog = None
# Runtime management is done by signals; a shared control socket path would also
# collide between several nodes on one host.
control_socket_disable = True


def post_worker_init(worker):
    """Route the worker's SIGTERM through the app's drain, then gunicorn's own exit."""
    from app.lifecycle import drain_on_sigterm

    drain_on_sigterm(worker.wsgi, lambda: worker.handle_exit(signal.SIGTERM, None))
