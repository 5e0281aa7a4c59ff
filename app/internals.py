"""The one door to the libraries' insides.

Everything this server takes from python-socketio, python-engineio, simple-websocket,
eventlet's websocket, gevent, gunicorn, limits or psycopg that they do not document as
public is used here and nowhere else: a method with a leading underscore, an
attribute set in a constructor, a class to subclass, a name-mangled method. The rest
of the app calls the functions below.

``CHECKED`` is what these were read against, and ``PRIVATE`` each name relied on and
what for; ``tests/test_internals.py`` fails on another installed version, or a name
gone, with the list of what to re-read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import simple_websocket
from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from engineio.packet import Packet as EioPacket
from engineio.payload import Payload
from limits.storage import MemoryStorage
from socketio.packet import Packet

log = logging.getLogger(__name__)

CHECKED = {
    "python-socketio": "5.18.1",
    "python-engineio": "4.15.1",
    "simple-websocket": "1.1.0",
    "eventlet": "0.41.3",
    "gevent": "26.9.0",
    "gunicorn": "25.3.0",
    "limits": "5.8.0",
    "psycopg": "3.3.9",
}


class Private(NamedTuple):
    """One name of a library's insides that this module uses."""

    distribution: str
    name: str
    use: str
    # Reaches the name, raising if it is gone (tests/test_internals.py calls it).
    reach: Callable[[], Any]


# -- python-socketio ---------------------------------------------------------------


class TextPacket(Packet):
    """Every payload this server sends is JSON text, so the scan of each outgoing
    payload for binary parts (an eighth of the emit path's time) is skipped."""

    uses_binary_events = False


def engineio_route(socketio: Any, sid: str) -> tuple[str, Callable[[str, Any], None]]:
    """A Socket.IO connection's Engine.IO session id, and the function that queues an
    Engine.IO packet on that session (``send(eio_sid, packet)``): python-socketio's
    own last step of an emit, without the rooms, callbacks and binary scan."""
    server = socketio.server
    return server.manager.eio_sid_from_sid(sid, "/"), server._send_eio_packet


def is_connected(socketio: Any, sid: str) -> bool:
    """Whether the Socket.IO connection ``sid`` is open: python-socketio marks a
    connection that is ending as no longer connected before its disconnect handler
    runs."""
    return socketio.server.manager.is_connected(sid, "/")


def drop_malformed(socketio: Any, on_malformed: Callable[[str, str], None]) -> None:
    """Hand each Engine.IO message that python-socketio fails to decode or dispatch
    (a malformed Socket.IO packet) to ``on_malformed(eio_sid, problem)`` instead of
    letting it raise: python-engineio would log its traceback, one per packet."""
    eio = socketio.server.eio
    handle = eio.handlers["message"]

    def message(eio_sid: str, data: Any) -> Any:
        try:
            return handle(eio_sid, data)
        except Exception as exc:
            # The packet's fault: a handler's own exception goes to Flask-SocketIO's
            # error handler, and never gets here.
            on_malformed(eio_sid, _problem(exc))
            return None

    eio.on("message", message)


def _problem(exc: BaseException) -> str:
    # Short and on one line, whatever the client put in the packet.
    return f"{type(exc).__name__}: {str(exc)[:80]!r}"


# -- python-engineio ---------------------------------------------------------------


def watch_sessions(
    eio: Any,
    opened: Callable[[str, dict[str, Any]], None],
    closed: Callable[[str], None],
) -> None:
    """Call ``opened(sid, environ)`` for each Engine.IO session the server accepts,
    and ``closed(sid)`` when it ends (its ``disconnect``, which every session gets,
    closed by either side or timed out)."""
    on_connect = eio.handlers["connect"]
    on_disconnect = eio.handlers["disconnect"]

    def connect(sid: str, environ: dict[str, Any], *args: Any) -> Any:
        accepted = on_connect(sid, environ, *args)
        # Any other answer makes Engine.IO drop the session unannounced.
        if accepted is None or accepted is True:
            opened(sid, environ)
        return accepted

    def disconnect(sid: str, *args: Any) -> Any:
        closed(sid)
        return on_disconnect(sid, *args)

    eio.on("connect", connect)
    eio.on("disconnect", disconnect)


def end_session(socketio: Any, eio_sid: str) -> None:
    """Close an Engine.IO session now (a no-op for one that has ended). Engine.IO's
    own ``disconnect`` waits until a long-polling client has fetched the CLOSE
    packet, which one that is being refused never does."""
    eio = socketio.server.eio
    session = eio.sockets.get(eio_sid)
    if session is not None:
        session.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)


def payload_problem(body: str) -> str | None:
    """Why a long-polling POST's body is not an Engine.IO payload python-engineio
    can decode, or None when it is."""
    try:
        Payload(encoded_payload=body)
    except Exception as exc:
        return _problem(exc)
    return None


def packet_problem(data: str | bytes) -> str | None:
    """Why one WebSocket message is not an Engine.IO packet python-engineio can
    decode, or None when it is (its WebSocket loop decodes outside any ``try``)."""
    try:
        EioPacket(encoded_packet=data)
    except Exception as exc:
        return _problem(exc)
    return None


# -- WebSockets: Engine.IO's WebSocket class, simple-websocket, eventlet's -----------


class Writer(Protocol):
    """Every write to one client's WebSocket (``delivery.WebSocketOut``)."""

    closed: bool
    takes_events: Callable[[], bool]
    engineio_holds: Callable[[], bool]

    def send_text(self, text: str) -> None: ...

    def write(self, frame: bytes) -> None: ...


class Writers(Protocol):
    """Makes each WebSocket's writer, and hears when it closes."""

    def opened(self, eio_sid: str, sock: Any, raw: Any) -> Writer: ...

    def closed(self, eio_sid: str, writer: Any) -> None: ...


class Gate(Protocol):
    """Reads a client's frame headers as they arrive (``inbound.FrameGate``)."""

    def feed(self, data: bytes) -> bool:
        """False once a message's frames announce more than the limit."""


class Reading(Protocol):
    """What the server does with what a client sends on its WebSocket
    (``inbound.Inbound``)."""

    max_message_bytes: int
    close_frame: bytes

    def gate(self) -> Gate: ...

    def oversized(self, eio_sid: str, transport: str) -> None: ...

    def malformed(self, eio_sid: str, problem: str) -> None: ...


class GatedSocket:
    """The socket a WebSocket library reads from, its every byte fed to a ``Gate``
    first: once a message announces more than the limit, the library reads the end
    of the connection instead, before it has buffered a byte of that frame."""

    def __init__(self, sock: Any, gate: Gate, refuse: Callable[[], None]):
        self.sock = sock
        self._gate = gate
        self._refuse = refuse
        self._refused = False

    def recv(self, size: int, *flags: int) -> bytes:
        if self._refused:
            return b""
        data = self.sock.recv(size, *flags)
        if data and not self._gate.feed(data):
            self._refused = True
            self._refuse()
            return b""
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def raw_socket(sock: Any) -> Any:
    """The OS socket under a green one: eventlet keeps it in ``fd``, gevent in
    ``_sock`` (eventlet's ``_sock`` is the green socket itself); a plain socket is its
    own. A send to it with ``MSG_DONTWAIT`` never waits, in any async mode."""
    return getattr(sock, "fd", None) or getattr(sock, "_sock", None) or sock


def install_websockets(socketio: Any, writers: Writers, reading: Reading) -> None:
    """Route every WebSocket of ``socketio``'s Engine.IO server through a writer of
    ``writers`` (its own writes and the relay's events alike), and every byte it
    reads through ``reading``'s frame gate: a message over
    ``reading.max_message_bytes`` closes the connection (1009) as soon as a frame
    header announces it, and a message Engine.IO cannot decode is dropped."""
    eio = socketio.server.eio
    base = eio._async["websocket"]
    simple = issubclass(base, SimpleWebSocketWSGI)

    class WebSocket(base):  # type: ignore[misc, valid-type]
        def __init__(self, handler: Callable[[Any], Any], server: Any):
            self._eio_socket = handler.__self__
            self._out: Writer | None = None
            # The connection's socket. Not "_sock" nor "socket": Engine.IO sets a
            # timeout on an attribute of either name, which under threading would
            # make the writer's MSG_DONTWAIT sends wait.
            self._conn: Any = None
            self._eventlet_ws: Any = None

            def handle(ws: Any) -> Any:
                return self._handle(handler, ws)

            super().__init__(handle, server)

        if simple:

            def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
                # SimpleWebSocketWSGI.__call__, with the gate and simple-websocket's
                # own message cap (which it does not pass on) added.
                self.ws = GatedServer(
                    environ,
                    self._gated,
                    max_message_size=reading.max_message_bytes,
                    **self.server_args,
                )
                ret = self.app(self)
                if self.ws.mode == "gunicorn":
                    raise StopIteration()
                elif self.ws.mode == "werkzeug":
                    raise ConnectionError()
                return ret

        def _gated(self, sock: Any) -> GatedSocket:
            self._conn = sock
            return GatedSocket(sock, reading.gate(), self._refuse)

        def _refuse(self) -> None:
            # Said through the writer, after what it holds; before the writer
            # exists nothing else writes.
            with contextlib.suppress(OSError):
                if self._out is not None:
                    self._out.write(reading.close_frame)
                else:
                    self._conn.sendall(reading.close_frame)
            if self._eventlet_ws is not None:
                # Else eventlet sends a close frame of its own after this one.
                self._eventlet_ws.websocket_closed = True
            reading.oversized(self._eio_socket.sid, "websocket")

        def _handle(self, handler: Callable[[Any], Any], ws: Any) -> Any:
            eio_socket = self._eio_socket
            # simple-websocket's wrapper keeps its server in ws.ws, eventlet's
            # WebSocket its socket in ws.socket.
            inner = getattr(ws, "ws", None)
            if inner is None:
                self._eventlet_ws = ws
                ws.socket = self._gated(ws.socket)
            out = self._out = writers.opened(
                eio_socket.sid, self._conn, raw_socket(self._conn)
            )
            # The relay's events go straight to the socket once the session is on
            # this WebSocket and Engine.IO holds nothing queued from before (which
            # must not be overtaken).
            out.takes_events = lambda: (
                eio_socket.upgraded and not out.closed and eio_socket.queue.empty()
            )
            out.engineio_holds = lambda: not eio_socket.queue.empty()
            if inner is not None:
                ws.send = out.send_text
            else:
                ws.send = lambda message, **kw: out.write(
                    ws._pack_message(message, **kw)
                )
                # eventlet writes a line for each socket closed under it, with no
                # line break: to the log, at debug level.
                ws.log = _DebugLog()
            ws.wait = _checked(ws.wait, eio_socket, reading)
            try:
                return handler(ws)
            finally:
                writers.closed(eio_socket.sid, out)

    eio._async = {**eio._async, "websocket": WebSocket}


def _checked(wait: Callable[[], Any], eio_socket: Any, reading: Reading) -> Callable:
    """``ws.wait`` that drops what Engine.IO could not decode."""

    def checked_wait() -> Any:
        while True:
            data = wait()
            if data is None:
                return None
            problem = packet_problem(data)
            if problem is None:
                return data
            reading.malformed(eio_socket.sid, problem)

    return checked_wait


class GatedServer(simple_websocket.Server):
    """simple-websocket's server, reading through a ``GatedSocket``."""

    def __init__(
        self,
        environ: dict[str, Any],
        gated: Callable[[Any], GatedSocket],
        **options: Any,
    ):
        self._make_gated = gated
        super().__init__(environ, **options)

    def handshake(self) -> None:
        # Called once the socket is known, before the reading thread starts.
        self.sock = self._make_gated(self.sock)
        super().handshake()


class _DebugLog:
    def write(self, text: str) -> None:
        log.debug("websocket: %s", text.strip())


# -- gunicorn ----------------------------------------------------------------------


def served_capacity() -> tuple[int, str] | None:
    """How many connections the gunicorn worker serving this process holds at once,
    and which setting says so; None when it is not gunicorn's worker.

    gunicorn installs its signal handlers, bound methods of its worker, before the
    worker loads the app or serves a request, and the app never replaces SIGQUIT's:
    that handler's owner is the running worker with its effective settings, however
    they were given (a config file, the command line, ``GUNICORN_CMD_ARGS``)."""
    if "gunicorn" not in sys.modules:
        return None
    from gunicorn.workers.base_async import AsyncWorker
    from gunicorn.workers.gthread import ThreadWorker

    worker = getattr(signal.getsignal(signal.SIGQUIT), "__self__", None)
    if isinstance(worker, ThreadWorker):
        # A WebSocket holds one of the threads for as long as it is open.
        cfg = worker.cfg
        return min(cfg.threads, cfg.worker_connections), "gunicorn's threads"
    if isinstance(worker, AsyncWorker):
        return worker.cfg.worker_connections, "gunicorn's worker_connections"
    return None


# -- limits ------------------------------------------------------------------------


class ReapedMemoryStorage(MemoryStorage):
    """limits' in-memory storage, its expired counters dropped by whoever calls
    ``expire`` (the relay's reaper, admission's handshakes).

    ``MemoryStorage`` starts a timer thread 10 ms after a hit to drop them: under
    eventlet, a green thread per chat whose teardown leaves reference cycles, that
    is garbage for the cyclic collector, whose pauses make tokens late. Counters
    are still checked for expiry as they are read; this only frees stale ones."""

    def _MemoryStorage__schedule_expiry(self) -> None:
        pass

    def expire(self) -> None:
        self._MemoryStorage__expire_events()


# -- what the names above rely on ----------------------------------------------------


def _engineio_server() -> Any:
    import engineio

    return engineio.Server(async_mode="threading")


def _engineio_socket() -> Any:
    from engineio.socket import Socket

    return Socket(_engineio_server(), "sid")


def _socketio_server() -> Any:
    import socketio

    return socketio.Server(async_mode="threading")


def _eventlet_websocket() -> Any:
    import socket

    from eventlet.websocket import RFC6455WebSocket

    left, right = socket.socketpair()
    left.close()
    right.close()
    return RFC6455WebSocket(left, {})


def _simple_websocket_server() -> Any:
    """A real simple-websocket server over a socket pair, handshake done."""
    import socket

    left, right = socket.socketpair()
    environ = {
        "gunicorn.socket": left,
        "HTTP_HOST": "localhost",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_UPGRADE": "websocket",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    server = GatedServer(environ, lambda sock: GatedSocket(sock, _Open(), lambda: None))
    right.close()  # its reading thread ends
    return server


class _Open:
    def feed(self, data: bytes) -> bool:
        return True


PRIVATE = [
    Private(
        "python-socketio",
        "socketio.packet.Packet.uses_binary_events",
        "TextPacket turns the scan for binary parts off",
        lambda: Packet.uses_binary_events,
    ),
    Private(
        "python-socketio",
        "socketio.Server._send_eio_packet(eio_sid, packet)",
        "engineio_route: the last step of an emit",
        lambda: _socketio_server()._send_eio_packet,
    ),
    Private(
        "python-socketio",
        "socketio.Server.manager.eio_sid_from_sid(sid, namespace)",
        "engineio_route: a connection's Engine.IO session",
        lambda: _socketio_server().manager.eio_sid_from_sid,
    ),
    Private(
        "python-socketio",
        "socketio.Server.manager.is_connected(sid, namespace)",
        "is_connected: a client's own 'disconnect' event told from the real one",
        lambda: _socketio_server().manager.is_connected,
    ),
    Private(
        "python-socketio",
        "socketio.Server._handle_eio_message, raising on a malformed packet",
        "drop_malformed wraps the Engine.IO 'message' handler it is",
        lambda: _socketio_server()._handle_eio_message,
    ),
    Private(
        "python-engineio",
        "engineio.Server.handlers['connect' | 'disconnect' | 'message']",
        "watch_sessions and drop_malformed wrap them (re-registered with on())",
        lambda: _engineio_server().handlers,
    ),
    Private(
        "python-engineio",
        "engineio.Server._async['websocket'], built per upgrade as "
        "cls(socket._websocket_handler, server); the handler sets a timeout on the "
        "instance's _sock or socket",
        "install_websockets subclasses it (handler.__self__ is the Engine.IO socket) "
        "and keeps its socket under another name",
        lambda: (
            _engineio_server()._async["websocket"],
            _engineio_socket()._websocket_handler,
            _source_has(_engineio_socket()._websocket_handler, "['_sock', 'socket']"),
        ),
    ),
    Private(
        "python-engineio",
        "engineio.Server.sockets; engineio.socket.Socket.close(wait=, reason=)",
        "end_session closes a session without waiting for its client",
        lambda: (
            _engineio_server().sockets,
            _engineio_server().reason.SERVER_DISCONNECT,
            _keywords(_engineio_socket().close, "wait", "reason"),
        ),
    ),
    Private(
        "python-engineio",
        "engineio.socket.Socket.upgraded, .queue, .sid",
        "install_websockets: whether the relay's events may skip Engine.IO's queue",
        lambda: (
            _engineio_socket().upgraded,
            _engineio_socket().queue.empty,
            _engineio_socket().sid,
        ),
    ),
    Private(
        "python-engineio",
        "engineio.async_drivers._websocket_wsgi.SimpleWebSocketWSGI: __call__, "
        "app, server_args, ws, wait",
        "install_websockets repeats its __call__ with a gated server",
        lambda: _simple_wsgi_names(),
    ),
    Private(
        "python-engineio",
        "engineio.packet.Packet(encoded_packet=...) and engineio.payload.Payload"
        "(encoded_payload=...) raise on what the server's own loops cannot decode",
        "packet_problem and payload_problem check messages before Engine.IO does",
        lambda: (EioPacket(encoded_packet="4x"), Payload(encoded_payload="4x")),
    ),
    Private(
        "simple-websocket",
        "simple_websocket.Server: handshake() called after self.sock is set and "
        "before the reading thread starts; max_message_size; mode; sock",
        "install_websockets reads through a GatedSocket and caps the message",
        lambda: _simple_server_names(),
    ),
    Private(
        "eventlet",
        "eventlet.websocket.RFC6455WebSocket: socket (read with recv), "
        "_pack_message, log, wait, websocket_closed",
        "install_websockets gates ws.socket and writes frames itself",
        lambda: _eventlet_names(),
    ),
    Private(
        "gevent",
        "gevent.socket.socket._sock",
        "raw_socket: the OS socket under a green one",
        lambda: _gevent_raw(),
    ),
    Private(
        "gunicorn",
        "gunicorn.workers.base.Worker.handle_quit, installed for SIGQUIT by "
        "init_signals; AsyncWorker, ThreadWorker",
        "served_capacity finds the running worker and its settings",
        lambda: _gunicorn_names(),
    ),
    Private(
        "limits",
        "limits.storage.MemoryStorage.__schedule_expiry and __expire_events",
        "ReapedMemoryStorage replaces the first and calls the second",
        lambda: (
            MemoryStorage._MemoryStorage__schedule_expiry,
            MemoryStorage._MemoryStorage__expire_events,
        ),
    ),
]


def _keywords(function: Callable, *names: str) -> None:
    import inspect

    missing = set(names) - set(inspect.signature(function).parameters)
    if missing:
        raise AttributeError(f"{function.__qualname__} takes no {sorted(missing)}")


def _source_has(function: Callable, text: str) -> None:
    import inspect

    if text not in inspect.getsource(function):
        raise AttributeError(f"{function.__qualname__} no longer has {text}")


def _simple_wsgi_names() -> None:
    import inspect

    wrapper = SimpleWebSocketWSGI(lambda ws: None, None, thread_class=None)
    wrapper.app, wrapper.server_args  # noqa: B018
    source = inspect.getsource(SimpleWebSocketWSGI.__call__)
    for step in ("simple_websocket.Server(environ, **self.server_args)", "mode"):
        if step not in source:
            raise AttributeError(f"SimpleWebSocketWSGI.__call__ has no {step}")
    SimpleWebSocketWSGI.wait  # noqa: B018


def _simple_server_names() -> None:
    server = _simple_websocket_server()
    if not isinstance(server.sock, GatedSocket) or server.mode != "gunicorn":
        raise AttributeError("handshake() ran before the socket was known")
    server.max_message_size  # noqa: B018


def _eventlet_names() -> None:
    ws = _eventlet_websocket()
    ws.socket, ws._pack_message("x"), ws.log, ws.wait, ws.websocket_closed  # noqa: B018


def _gevent_raw() -> None:
    import gevent.socket

    with gevent.socket.socket() as sock:
        if raw_socket(sock) is sock:
            raise AttributeError("gevent's socket has no _sock")


def _gunicorn_names() -> None:
    import inspect

    from gunicorn.workers.base import Worker
    from gunicorn.workers.base_async import AsyncWorker  # noqa: F401
    from gunicorn.workers.gthread import ThreadWorker  # noqa: F401

    if "signal.SIGQUIT, self.handle_quit" not in inspect.getsource(Worker.init_signals):
        raise AttributeError("Worker.init_signals installs no handle_quit")


# -- gunicorn's insides ----------------------------------------------------------------
# Checked against gunicorn 25.3. The WSGI environ holds the connection's socket as
# "gunicorn.socket". The gevent and eventlet workers (workers/base_async.py) read a
# request's line and headers within ``keepalive`` seconds (2 by default); the
# gthread worker (ThreadWorker.handle in workers/gthread.py) reads them with no
# time limit, on one of its threads.


def request_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The connection under an HTTP request, when gunicorn serves it."""
    return environ.get("gunicorn.socket")


@contextlib.contextmanager
def read_timeout(sock: socket.socket | None, seconds: float) -> Iterator[None]:
    """Reads of ``sock`` within this block raise ``TimeoutError`` after ``seconds``
    without a byte; gunicorn's own reads, after it, wait as they did."""
    if sock is None:
        yield
        return
    previous = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)


def stop_reading(environ: Mapping[str, Any]) -> None:
    """Read nothing more from this request's connection: gunicorn finds its end
    instead of the rest of a body, and closes it once the response is written."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def linger(environ: Mapping[str, Any], seconds: float, quiet: float = 0.25) -> None:
    """Close this request's connection gently, once its response is written: send
    its end, then read and drop what the client still sends, for ``seconds`` at
    most and until it has sent nothing for ``quiet`` seconds, so that the close
    does not reset it before it has read the response."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return
    deadline = time.monotonic() + seconds
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(min(left, quiet))
            if not sock.recv(65536):
                break
    except OSError:  # TimeoutError included: a client that sends nothing more
        pass
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)


def close_connection(environ: Mapping[str, Any]) -> None:
    """End this request's connection now: a write blocked on it fails at once
    (EPIPE, which gunicorn ignores quietly), and gunicorn closes it. The OS socket
    is shut down, not the green one: gevent's would fail the blocked write with
    EBADF instead, which gunicorn logs with its traceback."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            raw_socket(sock).shutdown(socket.SHUT_RDWR)


# Under gthread: worker thread -> (when its request's head is overdue, its
# connection) while the thread reads a request's line and headers.
_heads: dict[int, tuple[float, Any]] = {}
_heads_lock = threading.Lock()
_head_limit = {"seconds": 15.0, "answer": b"", "watcher": 0}


def watch_request_heads(seconds: float, answer: bytes) -> None:
    """Under gunicorn's gthread worker, give a request's line and headers
    ``seconds``, as the other workers' ``keepalive`` does: past it the connection
    gets ``answer`` (a whole HTTP response) and is closed. Elsewhere nothing."""
    module = sys.modules.get("gunicorn.workers.gthread")
    _head_limit.update(seconds=seconds, answer=answer)
    if module is None or getattr(module.ThreadWorker.handle, "_watched", False):
        return
    handle = module.ThreadWorker.handle

    def watched(worker: Any, conn: Any) -> Any:
        if _head_limit["watcher"] != os.getpid():
            # Started in the worker process itself (--preload loads the app in
            # gunicorn's master, whose threads a fork does not copy).
            _head_limit["watcher"] = os.getpid()
            threading.Thread(target=_watch_heads, daemon=True).start()
        thread = threading.get_ident()
        with _heads_lock:
            _heads[thread] = (time.monotonic() + _head_limit["seconds"], conn)
        try:
            return handle(worker, conn)
        finally:
            with _heads_lock:
                _heads.pop(thread, None)

    watched._watched = True  # type: ignore[attr-defined]
    module.ThreadWorker.handle = watched


def request_head_read(environ: Mapping[str, Any]) -> None:
    """This thread's request has its line and headers: the limit is off."""
    if _heads:
        with _heads_lock:
            _heads.pop(threading.get_ident(), None)


def _watch_heads() -> None:
    while True:
        time.sleep(min(1.0, _head_limit["seconds"] / 4))
        now = time.monotonic()
        with _heads_lock:
            overdue = [t for t, (deadline, _) in _heads.items() if deadline <= now]
            conns = [_heads.pop(thread)[1] for thread in overdue]
        for conn in conns:
            sock = conn.sock
            with contextlib.suppress(Exception):
                sock.send(_head_limit["answer"], socket.MSG_DONTWAIT)
            # The thread's read returns at once with the end of the connection,
            # which gunicorn takes for a client that left.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _gunicorn_request_names() -> None:
    import inspect

    from gunicorn.http import wsgi
    from gunicorn.workers.gthread import ThreadWorker

    if '"gunicorn.socket": sock' not in inspect.getsource(wsgi.default_environ):
        raise AttributeError("the WSGI environ has no gunicorn.socket")
    source = inspect.getsource(ThreadWorker.handle)
    if "next(conn.parser)" not in source or "conn.sock" not in source:
        raise AttributeError("ThreadWorker.handle(conn) reads no conn.sock's head")


PRIVATE += [
    Private(
        "gunicorn",
        'the WSGI environ\'s "gunicorn.socket"',
        "request_socket, read_timeout, stop_reading, linger, close_connection: "
        "request bodies and streamed responses bounded on their connection",
        lambda: _gunicorn_request_names(),
    ),
    Private(
        "gunicorn",
        "gunicorn.workers.gthread.ThreadWorker.handle(conn), reading the request "
        "head from conn.sock on the thread that then runs the app",
        "watch_request_heads wraps it to bound that read in time",
        lambda: _gunicorn_request_names(),
    ),
]


# -- psycopg -------------------------------------------------------------------------


def cooperative_psycopg() -> None:
    """Make psycopg wait for the server through ``select`` when gevent or eventlet
    patched it, so that a query yields to the other greenlets.

    psycopg does this by itself for gevent (when imported after the patching); under
    eventlet it would wait in C and stop every greenlet of the process until the
    server answers. Its ``waiting`` module is where it picks the wait function."""
    from psycopg import waiting

    if _select_patched() and waiting.wait is getattr(waiting, "wait_c", None):
        waiting.wait = waiting.wait_select


def _select_patched() -> bool:
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("select"):
            return True
    if "eventlet" in sys.modules:
        from eventlet import patcher

        if patcher.is_monkey_patched("select"):
            return True
    return False


def _psycopg_waiting() -> tuple[Any, Any]:
    from psycopg import waiting

    return waiting.wait, waiting.wait_select


PRIVATE += [
    Private(
        "psycopg",
        "psycopg.waiting.wait, wait_c and wait_select",
        "cooperative_psycopg: a query yields to other greenlets under eventlet",
        _psycopg_waiting,
    ),
]
