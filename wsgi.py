import gc
import os

# Patch the standard library before anything imports socket or threading.
ASYNC_MODE = os.environ.get("ASYNC_MODE") or "gevent"
if ASYNC_MODE == "gevent":
    import gevent
    from gevent import monkey

    monkey.patch_all()
    # gevent's default keeps, for debugging, the stack each greenlet was spawned
    # from: with four greenlets per idle connection that was 5 of its 69 KB.
    gevent.config.track_greenlet_tree = False
elif ASYNC_MODE == "eventlet":
    import eventlet

    eventlet.monkey_patch()

from app import create_app, socketio  # noqa: E402

app = create_app()
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
