"""HTTP routes: the health check and the built web page."""

import os

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    request,
    send_from_directory,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .auth import Unauthorized, identify

bp = Blueprint("web", __name__)

# The page runs its own scripts and styles only. KaTeX writes inline style attributes
# (heights of fractions, roots), hence 'unsafe-inline' for attributes alone; its fonts
# are assets here, the smallest inlined in its style sheet as data: URLs by the build,
# as is the icon; 'self' covers the page's own Socket.IO WebSocket (ws:, wss:) in
# every current browser. No page may frame it.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",
        "font-src 'self' data:",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@bp.after_request
def _no_sniffing(response: Response) -> Response:
    # Each response is what its Content-Type says, never a script a browser guessed.
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/healthz")
def healthz():
    relay = current_app.extensions["relay"]
    return jsonify(
        status="ok",
        live_streams=relay.live_count(),
        # Live plus ended ones still kept for resume.
        streams=len(relay.store),
        connections=len(relay.identities),
    )


@bp.route("/socket.io/", methods=["GET", "POST"])
@bp.route("/socket.io/", endpoint="socketio_websocket", websocket=True)
def socketio_path():
    """Not reached: Engine.IO answers this path before Flask does.

    Flask-SocketIO opens a Flask request context on this path for every Socket.IO
    event. Without a matching rule each one records a NotFound whose traceback
    forms a reference cycle: garbage per event that only the cyclic collector
    frees, and its pauses reach clients as late tokens."""
    abort(404)


@bp.get("/metrics")
def metrics():
    registry = current_app.extensions["relay"].metrics.registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _page(name: str):
    dist = current_app.config["WEB_DIST_DIR"]
    if not os.path.isfile(os.path.join(dist, name)):
        abort(
            404,
            description="the web page is not built; run scripts/build_web.sh "
            "(scripts/serve.sh does it for you)",
        )
    response = send_from_directory(dist, name)
    # The page names hashed assets; it must itself never be served stale.
    response.headers["Cache-Control"] = "no-cache"
    response.headers.update(PAGE_HEADERS)
    return response


@bp.get("/")
def index():
    response = _page("index.html")
    # The page opens Socket.IO with its owner cookie (app/owners.py): an anonymous
    # browser gets one here, before its first chat.
    try:
        identity = identify(None, request.environ, current_app.config)
    except Unauthorized:
        return response  # tokens are required: the token names the owner
    owners = current_app.extensions["owners"]
    value = owners.issue(identity, request.environ)
    if value is not None:
        owners.set_cookie(response, value, request.environ)
        # Never one browser's cookie kept by a shared cache for another.
        response.headers["Cache-Control"] = "private, no-cache"
    return response


@bp.get("/demo")
def demo():
    return _page("demo.html")


@bp.get("/assets/<path:filename>")
def assets(filename: str):
    response = send_from_directory(
        os.path.join(current_app.config["WEB_DIST_DIR"], "assets"), filename
    )
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
