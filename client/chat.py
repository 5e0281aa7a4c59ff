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

# How often a waiting stream checks that a request the server has not acknowledged
# still has a connection: without the ack's resume token it cannot be resumed.
_POLL_SECONDS = 1.0

# Refusals of a ``resume`` come as an error event and then the negative ack; the ack
# says it (as ``disconnected``, or ``lost_chunks`` for a gap), so the error event does
# not end the request.
_RESUME_REFUSALS = frozenset({"resume_denied", "invalid_request"})

# How long a hole in ``seq`` may last before the client asks for the missing chunks
# again. python-socketio runs each event's handler on a thread of its own, so a chunk
# may overtake the one before it by a moment; a hole that outlasts this was lost on the
# way (with several nodes, Redis pub/sub drops what it carries while Redis restarts).
GAP_SECONDS = 1.0

# Resumes sent for one hole before giving up: one usually fills it; more cover a
# replay lost too, or refused while the server's Redis is still coming back.
GAP_RESUMES = 3

EventCallback = Callable[[str, dict[str, Any]], None]


class ChatError(Exception):
    """A request that failed: ``code``, ``message`` and ``retryable``.

    ``code`` is one of the server's error codes, the code of a refused connection
    (``unauthorized``), or ``timeout``, ``connection_failed``, ``disconnected`` or
    ``lost_chunks`` (chunks that never arrived and could not be fetched again) for
    failures seen by the client.
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


class _GapPersists(ChatError):
    """Raised by the wait for the next event when a hole in ``seq`` outlasts its
    bound: the stream then asks for the missing chunks again."""

    def __init__(self) -> None:
        super().__init__("lost_chunks", "a chunk is missing", retryable=True)


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
    """A request on the wire: its event queue, what a resume needs, and its ``stop``.

    Written by the Socket.IO threads (under ``lock``); the stream reads only
    ``events``.
    """

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.lock = threading.Lock()
        self.token: str | None = None  # the ack's resume_token
        self.held = 0  # chunks 0 .. held-1 have arrived
        self.ahead: set[int] = set()  # seqs that arrived past a gap
        # The server knows the id on the current connection: an ack, a chunk or a
        # resume ack came on it.
        self.started = False
        self.stop_wanted = False
        self.stop_sent = False
        self.stop_acked = False

    def hold(self, seq: int) -> None:
        if seq >= self.held:
            self.ahead.add(seq)
        while self.held in self.ahead:
            self.ahead.remove(self.held)
            self.held += 1


def _chunks(done: dict[str, Any]) -> int:
    count = done.get("chunks")
    return count if isinstance(count, int) else 0


class _Answer:
    """Puts one request's events in order; ``feed`` returns the text now ready."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.next_seq = 0
        self.early: dict[int, str] = {}  # chunks that overtook a missing seq
        self.acked = False
        self.result: dict[str, Any] | None = None
        # A done that overtook some of its chunks: python-socketio runs each event's
        # handler on a thread of its own, so events may be handled out of order.
        self.done_early: dict[str, Any] | None = None
        # While the connection is down: when it dropped (monotonic), until a resume.
        self.away_since: float | None = None
        # While a seq is missing (chunks held past it, or a done waiting for it): when
        # the hole was seen or last asked for again (monotonic), and how many resumes
        # were sent for it.
        self.gap_since: float | None = None
        self.gap_resumes = 0

    def feed(self, event: str, data: dict[str, Any]) -> list[str]:
        try:
            return self._feed(event, data)
        finally:
            self._note_gap()

    def _note_gap(self) -> None:
        if not (self.early or self.done_early):
            self.gap_since, self.gap_resumes = None, 0
        elif self.gap_since is None:
            self.gap_since = time.monotonic()

    def gap_resume_sent(self) -> None:
        """A resume went out for the current hole: give it the bound again."""
        self.gap_resumes += 1
        self.gap_since = time.monotonic()

    def lost(self, reason: str) -> ChatError:
        return ChatError(
            "lost_chunks",
            f"chunk {self.next_seq} of the answer never arrived and could not be "
            f"fetched again ({reason}); retry",
            retryable=True,
        )

    def _feed(self, event: str, data: dict[str, Any]) -> list[str]:
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
            if self.done_early is not None and self.next_seq >= _chunks(
                self.done_early
            ):
                self.result, self.done_early = self.done_early, None
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
        elif event == "resume_ack":
            if not data.get("ok"):
                error = data.get("error") or {}
                raise ChatConnectionError(
                    "disconnected",
                    "the connection dropped and the server refused to resume the "
                    f"answer ({error.get('code')}: {error.get('message')})",
                    retryable=True,
                )
            self.away_since = None
            if self.gap_since is not None:
                # The resume fills any hole too: it starts the bound afresh.
                self.gap_since, self.gap_resumes = time.monotonic(), 0
        elif event == "gap_resume_ack":
            error = data.get("error") or {}
            # A refusal is final; other failures (the server's Redis still away) are
            # tried again, within GAP_RESUMES. Once the hole is filled, nothing to do.
            if (
                not data.get("ok")
                and self.gap_since is not None
                and error.get("code") in _RESUME_REFUSALS
            ):
                raise self.lost(f"{error.get('code')}: {error.get('message')}")
        elif event == "error":
            code = data.get("code")
            # unknown_id answers a stop that crossed the done; the request is fine.
            # A refused resume is said again by its negative ack.
            resuming = self.away_since is not None or self.gap_resumes > 0
            refused = resuming and code in _RESUME_REFUSALS
            if code != "unknown_id" and not refused:
                raise ChatError(
                    str(data.get("code", "internal")),
                    str(data.get("message", "")),
                    bool(data.get("retryable", False)),
                )
        elif event == "done":
            if self.next_seq < _chunks(data):
                self.done_early = data  # finished once the missing chunks are in
                return []
            self.result = data
        elif event == "disconnected":
            # Without the ack there is no resume token: nothing to resume with.
            if data.get("final") or not self.acked:
                raise ChatConnectionError(
                    "disconnected",
                    f"the connection dropped before the answer was complete "
                    f"({data.get('reason', 'unknown reason')})",
                    retryable=True,
                )
            if self.away_since is None:
                self.away_since = time.monotonic()
        return []

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ChatClient:
    """A conversation with the relay over one Socket.IO connection.

    ``with ChatClient(url) as chat: print(chat.ask("Hi"))``. The history is kept
    here and sent whole with every request. One stream at a time per client; use
    several clients for parallel conversations.

    A connection that drops mid-answer is reconnected and the answer resumed
    where it stopped: the stream goes on yielding, with nothing lost or repeated.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        resume_timeout: float = 30.0,
        on_event: EventCallback | None = None,
    ) -> None:
        """``token`` is sent as ``{token}`` auth to servers that require one.

        ``timeout`` bounds connecting and the wait for the server's first answer.

        ``resume_timeout`` bounds how long a stream whose connection dropped waits
        to be reconnected and resumed before it raises ``ChatError("disconnected")``;
        the server keeps an answer for ``RESUME_GRACE_SECONDS`` (30 s by default).

        ``on_event(name, payload)`` sees every event of this client's requests as
        it is consumed: ``ack``, ``chunk``, ``done``, ``error``, ``stop_ack``,
        after a reconnection ``resume_ack``, and after a resume sent to fill a hole
        in ``seq`` (see ``GAP_SECONDS``) ``gap_resume_ack``.
        """
        self.url = url
        self.model = model
        self.options = dict(options or {})
        self.timeout = timeout
        self.resume_timeout = resume_timeout
        self.on_event = on_event
        self.token = token
        self.history: list[dict[str, str]] = []
        self.last_result: dict[str, Any] | None = None
        self._requests: dict[str, _Request] = {}
        self._requests_lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._live: _Request | None = None
        self._refusal: Any = None
        self._connected = threading.Event()
        self._reconnecting = False
        # reconnection=True: after a transport error python-socketio reconnects,
        # with backoff, and _on_connect resumes the live request.
        # handle_sigint=False: Ctrl-C belongs to the application, which may want
        # it to mean "stop this answer" rather than "drop the connection".
        self._sio = socketio.Client(
            reconnection=True, handle_sigint=False, request_timeout=timeout
        )
        for event in ("chunk", "done", "error"):
            self._sio.on(event, partial(self._dispatch, event))
        self._sio.on("connect", self._on_connect)
        self._sio.on("disconnect", self._on_disconnect)
        self._sio.on("connect_error", self._on_connect_error)

    # Connection

    def connect(self) -> None:
        """Connect, or raise ``ChatConnectionError`` saying why not."""
        if self._sio.connected:
            return
        if self._reconnecting:
            # python-socketio is at it already; a second attempt would race it.
            if self._connected.wait(self.timeout):
                return
            raise ChatConnectionError(
                "connection_failed",
                f"cannot reconnect to {self.url} (still trying)",
                retryable=True,
            )
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
        self._reconnecting = False
        # shutdown() also ends a reconnection loop, which disconnect() leaves going.
        self._sio.shutdown()
        # A stream waiting to be resumed must not wait for a reconnection that was
        # just called off.
        for request in self._registered():
            self._dispatch(
                "disconnected", {"reason": "client closed", "final": True}, request
            )

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

        A dropped connection is reconnected and the answer resumed unseen; it
        raises ``ChatError("disconnected")`` only when that fails for
        ``resume_timeout`` seconds, the server refuses the resume (its window
        passed), or the connection dropped before the server acknowledged the
        request. Likewise a chunk lost on a live connection (several nodes, Redis
        restarting) is asked for again with ``resume`` after ``GAP_SECONDS``; when
        that fails the stream raises ``ChatError("lost_chunks")``, retryable.
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

        if not self._sio.connected and self._reconnecting:
            # Dropped between requests: give the reconnection a moment.
            self._connected.wait(self.timeout)
        request = _Request()
        payload = {"id": request.id, **payload}
        answer = _Answer()
        self.history.append(turn)
        self._live = request
        # Registered before the emit: a chunk may arrive before the ack.
        with self._requests_lock:
            self._requests[request.id] = request
        try:
            self._emit("chat", payload, partial(self._dispatch, "ack", request=request))
            while answer.result is None:
                try:
                    event, data = self._next_event(request, *self._bound(answer))
                except _GapPersists:
                    self._fill_gap(request, answer)
                    continue
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
        except ChatError as exc:
            if exc.code == "lost_chunks":
                # The client gave up, not the server, which may still be generating
                # what nobody will read. Its ack is awaited (briefly): a connection
                # closed right after may otherwise be handled before the stop.
                self._request_stop(request)
                self._drain(request, answer, lambda: request.stop_acked)
            raise  # otherwise the server (or the connection) has already ended it
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

        Safe to call from another thread or a signal handler. While the connection
        is down the stop waits for the resume.
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

    def _bound(self, answer: _Answer) -> tuple[float | None, ChatError | None]:
        """When waiting for the next event must end, and the error it ends with."""
        if answer.away_since is not None:
            return answer.away_since + self.resume_timeout, ChatConnectionError(
                "disconnected",
                "the connection dropped and could not be resumed within "
                f"{self.resume_timeout:g}s",
                retryable=True,
            )
        if answer.gap_since is not None:
            return answer.gap_since + GAP_SECONDS, _GapPersists()
        if not (answer.acked or answer.parts or answer.early):
            # Until the server answers at all, a lost request must not hang us;
            # after that the server's own upstream timeouts bound the wait.
            return time.monotonic() + self.timeout, ChatError(
                "timeout",
                f"no answer from the server within {self.timeout:g}s",
                retryable=True,
            )
        return None, None

    def _fill_gap(self, request: _Request, answer: _Answer) -> None:
        """Ask again, on this connection, for the chunks after the last contiguous
        one; the server replays them (and the end, if it came); duplicates drop."""
        if answer.gap_resumes >= GAP_RESUMES:
            raise answer.lost(
                f"still missing after {GAP_RESUMES} resumes of {GAP_SECONDS:g}s each"
            )
        with request.lock:
            token, after = request.token, request.held - 1
        answer.gap_resume_sent()
        # Without the ack's token there is nothing to resume with yet: the attempt
        # counts all the same, so a lost ack cannot make the stream wait forever.
        if token is not None:
            # Disconnected: the reconnection's own resume fills the hole.
            with contextlib.suppress(ChatError):
                self._emit(
                    "resume",
                    {"id": request.id, "token": token, "after": after},
                    partial(self._dispatch, "gap_resume_ack", request=request),
                )

    def _next_event(
        self,
        request: _Request,
        deadline: float | None = None,
        late: ChatError | None = None,
    ) -> tuple[str, dict[str, Any]]:
        while True:
            wait = _POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise late or ChatError("timeout", "no answer", retryable=True)
            try:
                event, data = request.events.get(timeout=wait)
            except queue.Empty:
                # The disconnect handler tells the requests it knows of; this
                # catches a chat sent as the connection dropped, which no resume
                # can save (no ack, no token).
                if request.token is None and not self._sio.connected:
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

    def _registered(self) -> list[_Request]:
        with self._requests_lock:
            return list(self._requests.values())

    def _dispatch(
        self, event: str, data: Any = None, request: _Request | None = None
    ) -> None:
        """Route an event to its request's queue, noting what a resume needs.

        Every event a stream sees passes through here: the server's events (routed
        by their id; other ids are not ours), the acks of ``chat``, ``stop`` and
        ``resume`` (``request`` given: a negative ack has no id), and the
        client's own ``disconnected``.
        """
        if request is None:
            request_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(request_id, str):
                return
            with self._requests_lock:
                request = self._requests.get(request_id)
            if request is None:
                return
        if not isinstance(data, dict):
            data = {"ok": False}  # an ack without a payload
        started = False
        with request.lock:
            if event == "chunk":
                if isinstance(data.get("seq"), int):
                    request.hold(data["seq"])
                started = True
            elif event in ("ack", "resume_ack") and data.get("ok"):
                if event == "ack":
                    request.token = data.get("resume_token")
                started = True
            elif event == "stop_ack":
                request.stop_acked = True
            elif event == "disconnected":
                # A new connection knows the id only once resumed, and a stop sent
                # as the old one dropped may never have arrived.
                request.started = False
                request.stop_sent = False
        if started:
            self._mark_started(request)
        request.events.put((event, data))

    def _on_connect(self) -> None:
        """Resume the requests a dropped connection left, on this new one."""
        self._reconnecting = False
        for request in self._registered():
            with request.lock:
                token, after = request.token, request.held - 1
            # Without a token the request was never acknowledged: its stream fails.
            if token is not None:
                with contextlib.suppress(ChatError):  # dropped again: next connect
                    self._emit(
                        "resume",
                        {"id": request.id, "token": token, "after": after},
                        partial(self._dispatch, "resume_ack", request=request),
                    )
        self._connected.set()

    def _on_connect_error(self, data: Any = None) -> None:
        self._refusal = data

    def _on_disconnect(self, reason: Any = None) -> None:
        self._connected.clear()
        # python-socketio reconnects after a transport error only: a disconnect
        # by either side is final.
        final = reason != self._sio.reason.TRANSPORT_ERROR
        self._reconnecting = not final
        for request in self._registered():
            self._dispatch(
                "disconnected", {"reason": str(reason), "final": final}, request
            )

    def _mark_started(self, request: _Request) -> None:
        with request.lock:
            request.started = True
            send = request.stop_wanted and not request.stop_sent
            request.stop_sent |= send
        if send:
            self._send_stop(request)

    def _request_stop(self, request: _Request) -> None:
        # A stop sent before the server has seen the chat could be handled first
        # and answered unknown_id, so it waits for the ack or the first chunk (or,
        # after a reconnection, the resume).
        with request.lock:
            request.stop_wanted = True
            send = request.started and not request.stop_sent
            request.stop_sent |= send
        if send:
            self._send_stop(request)

    def _send_stop(self, request: _Request) -> None:
        try:
            self._emit(
                "stop",
                {"id": request.id},
                partial(self._dispatch, "stop_ack", request=request),
            )
        except ChatError:
            # Disconnected: sent again once the request is resumed.
            with request.lock:
                request.stop_sent = False
