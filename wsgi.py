import gc
import os

if os.environ.get("ASYNC_MODE", "eventlet") == "eventlet":
    # Patch the standard library before anything imports socket or threading.
    import eventlet

    eventlet.monkey_patch()

from app import create_app, socketio  # noqa: E402

app = create_app()
# What is loaded by now lives as long as the process: keep the cyclic collector from
# walking it again on every full collection (a pause felt as late tokens).
gc.freeze()

if __name__ == "__main__":
    from app.lifecycle import drain_on_sigterm

    drain_on_sigterm(app, lambda: os._exit(0))
    socketio.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        allow_unsafe_werkzeug=True,
    )
