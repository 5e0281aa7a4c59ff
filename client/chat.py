"""ChatClient: one Socket.IO connection to the relay, one conversation."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any

import socketio

DEFAULT_URL = "http://127.0.0.1:5000"

# Negative acks carry only {code, message}; this mirrors the README's error table.
RETRYABLE_CODES = frozenset(
    {
        "busy",
        "rate_limited",
        "upstream_rate_limited",
        "upstream_unavailable",
        "upstream_timeout",
    }
)

# How often a waiting stream checks that its connection is still the same one.
_POLL_SECONDS = 1.0

EventCallback = Callable[[str, dict[str, Any]], None]


class ChatError(Exception):
    """A request that failed: ``code``, ``message`` and ``retryable``.

    ``code`` is one of the server's error codes, the code of a refused connection
    (``unauthorized``), or ``timeout``, ``connection_failed`` or ``disconnected``
    for failures seen by the client.
    """

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        # One argument only: OSError (see ChatConnectionError) would read three as
        # errno, strerror and filename.
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class ChatConnectionError(ChatError, ConnectionError):
    """The server cannot be reached, or the connection dropped mid-request."""


def _reason(exc: Exception) -> str:
    """The gist of a connect failure; requests' own text names pools and retries."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower():
        return "timed out"
    return text


class _Request:
    """A request on the wire: its event queue and the state of its ``stop``."""

    def __init__(self, sid: str | None) -> None:
        self.id = uuid.uuid4().hex
        self.sid = sid  # the connection it was sent on; a new sid means it is lost
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.lock = threading.Lock()
        self.started = False  # the server knows the id: an ack or a chunk came
        self.stop_wanted = False
        self.stop_sent = False


class _Answer:
    """Puts one request's events in order; ``feed`` returns the text now ready."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.next_seq = 0
        self.early: dict[int, str] = {}  # chunks that overtook a missing seq
        self.acked = False
        self.result: dict[str, Any] | None = None

    def feed(self, event: str, data: dict[str, Any]) -> list[str]:
        if event == "chunk":
            seq, delta = data.get("seq"), data.get("delta")
            if not isinstance(seq, int) or not isinstance(delta, str):
                return []
            if seq < self.next_seq or seq in self.early:
                return []  # a duplicate
            self.early[seq] = delta
            ready = []
            while self.next_seq in self.early:
                ready.append(self.early.pop(self.next_seq))
                self.next_seq += 1
            self.parts += ready
            return ready
        if event == "ack":
            if not data.get("ok"):
                error = data.get("error") or {}
                code = str(error.get("code", "internal"))
                raise ChatError(
                    code,
                    str(error.get("message", "request rejected")),
                    bool(error.get("retryable", code in RETRYABLE_CODES)),
                )
            self.acked = True
        elif event == "error":
            # unknown_id answers a stop that crossed the done; the request is fine.
            if data.get("code") != "unknown_id":
                raise ChatError(
                    str(data.get("code", "internal")),
                    str(data.get("message", "")),
                    bool(data.get("retryable", False)),
                )
        elif event == "done":
            # The protocol has no gaps; should one appear, keep the text anyway.
            ready = [self.early.pop(seq) for seq in sorted(self.early)]
            self.parts += ready
            self.result = data
            return ready
        elif event == "disconnected":
            raise ChatConnectionError(
                "disconnected",
                f"the connection dropped before the answer was complete "
                f"({data.get('reason', 'unknown reason')})",
                retryable=True,
            )
        return []

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ChatClient:
    """A conversation with the relay over one Socket.IO connection.

    ``with ChatClient(url) as chat: print(chat.ask("Hi"))``. The history is kept
    here and sent whole with every request. One stream at a time per client; use
    several clients for parallel conversations.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        on_event: EventCallback | None = None,
    ) -> None:
        """``token`` is sent as ``{token}`` auth to servers that require one.

        ``timeout`` bounds connecting and the wait for the server's first answer.

        ``on_event(name, payload)`` sees every event of this client's requests as
        it is consumed: ``ack``, ``chunk``, ``done``, ``error`` and ``stop_ack``.
        """
        self.url = url
        self.model = model
        self.options = dict(options or {})
        self.timeout = timeout
        self.on_event = on_event
        self.token = token
        self.history: list[dict[str, str]] = []
        self.last_result: dict[str, Any] | None = None
        self._requests: dict[str, _Request] = {}
        self._requests_lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._live: _Request | None = None
        self._refusal: Any = None
        # handle_sigint=False: Ctrl-C belongs to the application, which may want
        # it to mean "stop this answer" rather than "drop the connection".
        self._sio = socketio.Client(handle_sigint=False, request_timeout=timeout)
        for event in ("chunk", "done", "error"):
            self._sio.on(event, partial(self._dispatch, event))
        self._sio.on("disconnect", self._on_disconnect)
        self._sio.on("connect_error", self._on_connect_error)

    # Connection

    def connect(self) -> None:
        """Connect, or raise ``ChatConnectionError`` saying why not."""
        if self._sio.connected:
            return
        self._refusal = None
        auth = {"token": self.token} if self.token else None
        try:
            self._sio.connect(self.url, auth=auth, wait_timeout=self.timeout)
        except (socketio.exceptions.SocketIOError, ValueError) as exc:
            refusal = self._refusal
            if isinstance(refusal, dict) and "message" in refusal:
                # The server itself said no (e.g. a missing token): its reason and
                # code beat python-socketio's "namespaces failed to connect".
                details = refusal.get("data")
                code = details.get("code") if isinstance(details, dict) else None
                raise ChatConnectionError(
                    str(code or "connection_refused"),
                    f"{self.url} refused the connection: {refusal['message']}",
                    retryable=False,
                ) from exc
            raise ChatConnectionError(
                "connection_failed",
                f"cannot connect to {self.url}: {_reason(exc)}",
                retryable=True,
            ) from exc

    def close(self) -> None:
        """Disconnect; a live stream ends with ``ChatError("disconnected")``."""
        request = self._live
        if request is not None:
            # Stop it first: the server keeps a dropped client's generations
            # running for a while, in case it comes back.
            self._request_stop(request)
        # shutdown() also ends a reconnection loop, which disconnect() leaves going.
        self._sio.shutdown()

    @property
    def connected(self) -> bool:
        return self._sio.connected

    def __enter__(self) -> ChatClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Conversation

    def stream(
        self,
        prompt: str,
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> Iterator[str]:
        """Send ``prompt`` with the history and yield the answer's text as it comes.

        At ``done`` the exchange joins the history and ``last_result`` holds the
        ``done`` payload. A failure raises ``ChatError`` and leaves the history as
        it was. Leaving the loop early cancels the request, as ``stop()`` does: the
        partial answer joins the history (unless it is empty: the server refuses
        empty turns).
        """
        if self._live is not None:
            raise RuntimeError("this client is already streaming an answer")
        turn = {"role": "user", "content": prompt}
        payload: dict[str, Any] = {"messages": [*self.history, turn]}
        model = model if model is not None else self.model
        if model is not None:
            payload["model"] = model
        merged = {**self.options, **(options or {})}
        if merged:
            payload["options"] = merged

        request = _Request(self._sio.sid)
        payload = {"id": request.id, **payload}
        answer = _Answer()
        self.history.append(turn)
        self._live = request
        # Registered before the emit: a chunk may arrive before the ack.
        with self._requests_lock:
            self._requests[request.id] = request
        try:
            self._emit("chat", payload, partial(self._on_ack, request, "ack"))
            while answer.result is None:
                # Until the server answers at all, a lost request must not hang us;
                # after that the server's own upstream timeouts bound the wait.
                started = answer.acked or answer.parts or answer.early
                deadline = None if started else time.monotonic() + self.timeout
                event, data = self._next_event(request, deadline)
                try:
                    ready = answer.feed(event, data)
                except ChatError:
                    if event == "error" and not answer.acked:
                        # A rejected chat gets an error event and then a negative
                        # ack; wait for the ack so that on_event sees both.
                        self._drain(request, answer, lambda: answer.acked)
                    raise
                yield from ready
        except GeneratorExit:
            # The consumer left early: cancel, then wait briefly for the done so
            # that the history gets the partial answer and the server frees the
            # slot before the next request (it caps requests per connection).
            self._request_stop(request)
            self._drain(request, answer, lambda: answer.result is not None)
            raise
        except ChatError:
            raise  # the server (or the connection) has already ended it
        except BaseException:
            # A KeyboardInterrupt or a failing on_event leaves the request running.
            self._request_stop(request)
            raise
        finally:
            with self._requests_lock:
                self._requests.pop(request.id, None)
            self._live = None
            self._settle(turn, answer)

    def ask(
        self,
        prompt: str,
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> str:
        """The whole answer to ``prompt``, as ``stream`` would yield it."""
        return "".join(self.stream(prompt, model=model, options=options))

    def stop(self) -> None:
        """Cancel the live request; its stream ends with ``finish_reason`` cancelled.

        Safe to call from another thread or a signal handler.
        """
        request = self._live
        if request is not None:
            # A thread rather than an emit here: a signal handler may have
            # interrupted this thread while it held a lock that emit needs.
            threading.Thread(
                target=self._request_stop, args=(request,), daemon=True
            ).start()

    def reset(self) -> None:
        """Forget the conversation."""
        self.history.clear()
        self.last_result = None

    # Internals

    def _emit(
        self, event: str, data: dict[str, Any], callback: Callable[..., None]
    ) -> None:
        try:
            with self._emit_lock:
                self._sio.emit(event, data, callback=callback)
        except socketio.exceptions.BadNamespaceError:
            raise ChatConnectionError(
                "disconnected", f"not connected to {self.url}", retryable=True
            ) from None

    def _next_event(
        self, request: _Request, deadline: float | None
    ) -> tuple[str, dict[str, Any]]:
        while True:
            wait = _POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise ChatError(
                        "timeout",
                        f"no answer from the server within {self.timeout:g}s",
                        retryable=True,
                    )
            try:
                event, data = request.events.get(timeout=wait)
            except queue.Empty:
                # The disconnect handler normally tells us; this catches a drop
                # that raced the request's registration.
                if self._sio.sid is None or self._sio.sid != request.sid:
                    event, data = "disconnected", {"reason": "connection lost"}
                else:
                    continue
            if self.on_event is not None and event != "disconnected":
                self.on_event(event, data)
            return event, data

    def _drain(
        self, request: _Request, answer: _Answer, until: Callable[[], bool]
    ) -> None:
        """Consume events without yielding them, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        # A ChatError ends the wait: the failure is already known or moot.
        with contextlib.suppress(ChatError):
            while not until():
                answer.feed(*self._next_event(request, deadline))

    def _settle(self, turn: dict[str, str], answer: _Answer) -> None:
        """Record a finished exchange, or take back the turn of a failed one."""
        ours = bool(self.history) and self.history[-1] is turn  # unless reset()
        if answer.result is not None:
            self.last_result = answer.result
        if not ours:
            return
        if answer.result is not None and answer.text:
            self.history.append({"role": "assistant", "content": answer.text})
        else:
            # Failed, or stopped before any text: the server rejects an empty turn.
            self.history.pop()

    def _dispatch(self, event: str, data: Any) -> None:
        """Route a server event to the request it names; other ids are not ours.

        Every server event passes through here (a resume protocol hooks in here).
        """
        request_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(request_id, str):
            return
        with self._requests_lock:
            request = self._requests.get(request_id)
        if request is None:
            return
        if event == "chunk":
            self._mark_started(request)
        request.events.put((event, data))

    def _on_ack(self, request: _Request, event: str, *args: Any) -> None:
        data = args[0] if args and isinstance(args[0], dict) else {"ok": False}
        if event == "ack" and data.get("ok"):
            self._mark_started(request)
        request.events.put((event, data))

    def _on_connect_error(self, data: Any = None) -> None:
        self._refusal = data

    def _on_disconnect(self, reason: Any = None) -> None:
        with self._requests_lock:
            requests = list(self._requests.values())
        for request in requests:
            request.events.put(("disconnected", {"reason": str(reason)}))

    def _mark_started(self, request: _Request) -> None:
        with request.lock:
            request.started = True
            send = request.stop_wanted and not request.stop_sent
            request.stop_sent |= send
        if send:
            self._send_stop(request)

    def _request_stop(self, request: _Request) -> None:
        # A stop sent before the server has seen the chat could be handled first
        # and answered unknown_id, so it waits for the ack or the first chunk.
        with request.lock:
            request.stop_wanted = True
            send = request.started and not request.stop_sent
            request.stop_sent |= send
        if send:
            self._send_stop(request)

    def _send_stop(self, request: _Request) -> None:
        # ChatError here means disconnected: the request is over anyway.
        with contextlib.suppress(ChatError):
            self._emit(
                "stop", {"id": request.id}, partial(self._on_ack, request, "stop_ack")
            )
