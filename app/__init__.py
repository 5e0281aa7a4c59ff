"""The chat relay service: ``create_app`` builds it, ``socketio`` serves it."""

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from flask_socketio import SocketIO

from .config import Config

socketio = SocketIO()


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config.from_object(Config)
    if overrides:
        app.config.update(overrides)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # httpx logs every upstream request at INFO; the relay logs each chat itself.
    logging.getLogger("httpx2").setLevel(logging.WARNING)

    from . import events, tokens  # noqa: F401  (registers the Socket.IO handlers)
    from .admission import Admission
    from .conversations import Recorder
    from .conversations_api import bp as conversations_api
    from .delivery import WebSocketWriters
    from .http_limits import HttpLimits
    from .inbound import Inbound
    from .internals import TextPacket, drop_malformed, install_websockets
    from .moderation import make_moderation
    from .openai_api import bp as openai_api
    from .origins import Origins
    from .owners import Owners
    from .providers import make_provider
    from .relay import Relay
    from .responses.api import bp as responses_api
    from .stages import Stage
    from .web import bp

    queue = app.config["SOCKETIO_MESSAGE_QUEUE"]
    app.config["STREAM_STORE_URL"] = app.config["STREAM_STORE_URL"] or queue
    cluster = None
    if app.config["STREAM_STORE_URL"]:
        from .cluster import Cluster, ClusterStreamStore

        store = ClusterStreamStore(
            app.config["STREAM_STORE_URL"],
            app.config["NODE_ID"] or Cluster.new_node_id(),
            app.config["RESUME_GRACE_SECONDS"],
        )
        cluster = Cluster(store, socketio.start_background_task)

    provider = make_provider(app.config)
    app.extensions["owners"] = Owners(app.config)
    # The capabilities the core calls at its named points (app/stages.py), in order.
    stages: list[Stage] = []
    # Moderation first: a flagged message goes neither upstream nor to the store.
    moderation = make_moderation(app.config)
    if moderation is not None:
        stages.append(moderation)
    history = app.extensions["history"] = _open_history(app.config)
    if history is not None:
        stages.append(Recorder(history))
    app.extensions["relay"] = Relay(socketio, provider, app.config, cluster, stages)
    if moderation is not None:
        moderation.bind(app.extensions["relay"])
    app.register_blueprint(bp)
    app.register_blueprint(openai_api)
    app.register_blueprint(responses_api)
    app.register_blueprint(conversations_api)
    options: dict[str, Any] = {}
    if queue:
        # python-socketio's Redis manager speaks JSON, never pickle.
        options = {"message_queue": queue, "channel": "chatstream"}
    origins = app.extensions["origins"] = Origins(app.config)
    socketio.init_app(
        app,
        async_mode=app.config["ASYNC_MODE"],
        # The page's own origin, on an allowed host, and CORS_ALLOWED_ORIGINS.
        cors_allowed_origins=origins.allowed,
        max_http_buffer_size=app.config["MAX_MESSAGE_BYTES"],
        serializer=TextPacket,
        # Handlers use no Flask session: do not copy one for every event.
        manage_session=False,
        **options,
    )
    # What clients send on Engine.IO, bounded as it arrives (app/inbound.py).
    inbound = Inbound(app.config, app.extensions["relay"].metrics)
    app.wsgi_app = inbound.middleware(app.wsgi_app, socketio)
    drop_malformed(socketio, inbound.malformed)
    # Admission first: a refused handshake costs nothing else (app/admission.py).
    admission = Admission(app.config, app.extensions["relay"].metrics)
    admission.watch(socketio.server.eio)
    app.extensions["admission"] = admission
    app.wsgi_app = admission.middleware(_without_websocket_compression(app.wsgi_app))
    app.wsgi_app = HttpLimits(app.config, admission).middleware(app.wsgi_app)
    app.wsgi_app = origins.middleware(app.wsgi_app)  # outermost: before admission
    writers = WebSocketWriters(
        app.config["MAX_QUEUED_BYTES"],
        socketio.start_background_task,
        app.extensions["relay"].slow_client,
    )
    install_websockets(socketio, writers, inbound)
    if cluster is not None:
        cluster.start()
    tokens.warm_up()
    return app


def _open_history(config: Mapping[str, Any]) -> Any:
    """The conversation store, opened (and its schema brought up to date) at start;
    None when ``HISTORY`` is off."""
    if not config["HISTORY"]:
        return None
    from .blocking import POOL_SIZE, Offload
    from .conversations import History
    from .history import Store

    store = Store.open(config["DATABASE_URL"], pool_size=POOL_SIZE)
    return History(store, Offload(config["ASYNC_MODE"]), socketio)


def _without_websocket_compression(wsgi_app: Callable) -> Callable:
    """Decline permessage-deflate, which browsers and socket.io-client offer.

    Each chunk event is a few dozen bytes, which deflate barely shrinks, and each
    compressed connection costs a zlib compressor (~100 KB) and CPU per frame;
    Socket.IO's own Node server turns it off by default for the same reasons."""

    def app(environ: dict[str, Any], start_response: Callable) -> Any:
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return wsgi_app(environ, start_response)

    return app
