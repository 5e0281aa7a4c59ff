"""ChatClient: one Socket.IO connection to the relay, one conversation."""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Literal, NamedTuple, overload

import socketio

from client.answer import ANSWER, GAP_RESUMES, GAP_SECONDS, REFUSAL, Answer, Delta
from client.api import Api, reason
from client.errors import ChatConnectionError, ChatError
from client.images import ImageSource, image_url

DEFAULT_URL = "http://127.0.0.1:5000"

# How often a waiting stream checks that a request the server has not acknowledged
# still has a connection: without the ack's resume token it cannot be resumed.
_POLL_SECONDS = 1.0

EventCallback = Callable[[str, dict[str, Any]], None]

# The ends after which an answer's tool calls may be cut short (their arguments
# incomplete): such calls do not join the history.
_CUT_SHORT = frozenset({"cancelled", "length", "content_filter"})


class _GapPersists(ChatError):
    """Raised by the wait for the next event when a hole in ``seq`` outlasts its
    bound: the stream then asks for the missing chunks again."""

    def __init__(self) -> None:
        super().__init__("lost_chunks", "a chunk is missing", retryable=True)


class _Step(NamedTuple):
    """An event as the stream consumes it, with what it did to the answer."""

    event: str
    data: dict[str, Any]
    ready: list[Delta]  # the text it put in seq order
    failure: ChatError | None  # the error it ends the request with
    result: dict[str, Any] | None  # the done, when it completed the answer


class _Request:
    """A request on the wire: its answer, its queue of steps, what a resume needs,
    and its ``stop``.

    The Socket.IO threads apply each event to ``answer`` as it arrives (under
    ``lock``), so that a resume always continues after the last chunk in order, and
    queue the step for the stream, which yields it and calls ``on_event``.
    """

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.answer = Answer()
        self.steps: queue.Queue[_Step] = queue.Queue()
        self.lock = threading.Lock()
        self.token: str | None = None  # the ack's resume_token
        # The server knows the id on the current connection: an ack, a chunk or a
        # resume ack came on it.
        self.started = False
        self.stop_wanted = False
        self.stop_sent = False
        self.stop_acked = False
        # What the stream has consumed (it alone writes these): the chat's ack,
        # and the done that completed the answer.
        self.ack_consumed = False
        self.result: dict[str, Any] | None = None
        # Where the server keeps the exchange (the ack says; None when it keeps
        # nothing): the conversation, and the id the answer will have.
        self.conversation_id: str | None = None
        self.answer_id: str | None = None

    def take(self, event: str, data: dict[str, Any]) -> _Step:
        """Apply an event to the answer; the caller holds ``lock``."""
        finished = self.answer.result is not None
        try:
            ready = self.answer.apply(event, data)
        except ChatError as exc:
            return _Step(event, data, [], exc, None)
        result = None if finished else self.answer.result
        return _Step(event, data, ready, None, result)

    def resume_point(self) -> tuple[str | None, int]:
        """The ack's token and the last seq held in order; the caller holds
        ``lock``."""
        return self.token, self.answer.next_seq - 1


class ChatClient:
    """A conversation with the relay over one Socket.IO connection.

    ``with ChatClient(url) as chat: print(chat.ask("Hi"))``. One stream at a time
    per client; use several clients for parallel conversations.

    The server keeps the conversation (``store=True``, the default): the first
    request creates it, and its ack names it (``conversation_id``); every later
    request sends only the new messages (a prompt, or tool results) with the
    conversation's id and the last answer's (``parent_id``), and the server builds
    the history from what it stored. ``ChatClient(conversation_id=ID)`` (or
    ``load(ID)``) goes on with a stored conversation, from its current branch;
    ``conversations()`` lists them. With ``store=False``, or with a server that
    keeps nothing (its ack names no conversation), the history is kept here only
    and sent whole with every request, as before.

    ``history`` is the conversation as this client knows it, OpenAI-shaped
    messages, in both cases: the user's turns, the answers with their tool calls,
    the tools' results. Stateless, it is what each request sends (edit it to change
    what the model sees). In a stored conversation it mirrors the branch the
    client is on, filled from the server by ``load``: the model sees what the
    server stored, whatever the list holds; each request follows the client's own
    last answer (``leaf_id``), so another device going on with the same
    conversation meanwhile makes a branch rather than a mix.

    Without a token the server knows the client by an anonymous owner cookie,
    which ``connect()`` (or the first REST call) obtains from the server's REST API
    and sends with every call and at the Socket.IO handshake; ``owner_cookie``
    holds it, to pass to a later client as ``ChatClient(owner_cookie=...)``, for
    the same conversations. With a token, the token is the owner.

    A connection that drops mid-answer is reconnected and the answer resumed
    where it stopped: the stream goes on yielding, with nothing lost or repeated.

    A reasoning model's reasoning comes before its answer: ``stream(prompt)``
    yields the answer only, ``stream(prompt, reasoning=True)`` both, as ``Delta``
    pairs (``kind``, ``text``), and the model's tool calls too. The history holds
    OpenAI-shaped messages: the user's, the answers (never the reasoning) with
    their tool calls, and the tools' results.

    ``last_result`` is the last completed answer's ``done`` payload as the server
    sent it (``finish_reason``, ``usage`` with ``reasoning_tokens``, ``timing`` with
    ``answer_ttft_ms``, ``model``), plus ``reasoning``: its reasoning text, ``""``
    when it had none; ``refusal``: the text of a refusal, ``""`` for none; and
    ``tool_calls``: the calls it made, in OpenAI's shape, ``[]`` for none.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        system: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        resume_timeout: float = 30.0,
        on_event: EventCallback | None = None,
        conversation_id: str | None = None,
        store: bool = True,
        owner_cookie: str | None = None,
    ) -> None:
        """``options`` are request fields sent with every request (``temperature``,
        ``tool_choice``, …); ``tools`` is the ``tools`` one, the tools the model
        may call.

        ``system`` is sent as a ``system`` message before the history, with every
        request (the server's own system prompt, if it has one, comes first).

        ``token`` is sent as ``{token}`` auth to servers that require one.

        ``timeout`` bounds connecting and the wait for the server's first answer.

        ``resume_timeout`` bounds how long a stream whose connection dropped waits
        to be reconnected and resumed before it raises ``ChatError("disconnected")``;
        the server keeps an answer for ``RESUME_GRACE_SECONDS`` (30 s by default).

        ``on_event(name, payload)`` sees every event of this client's requests as
        it is consumed, as the server sent it: ``ack``, ``chunk`` (reasoning ones
        too), ``done``, ``error``, ``retract`` (the server's moderation took the
        chunks from ``from_seq`` on back: they leave the answer, its history and
        ``last_result``; the ``done`` says ``content_filter``), ``stop_ack``, after
        a reconnection
        ``resume_ack``, and after a resume sent to fill a hole in ``seq`` (see
        ``GAP_SECONDS``) ``gap_resume_ack``.

        ``conversation_id``: a stored conversation to go on with; ``connect()``
        loads it (``ChatError("not_found")`` when this owner has no such
        conversation). ``store=False``: the server stores nothing; the history
        lives here only. ``owner_cookie``: the anonymous owner cookie's value from
        an earlier client (see ``owner_cookie``), ignored with a token.
        """
        if conversation_id is not None:
            _check_conversation_id(conversation_id)
            if not store:
                raise ValueError("conversation_id: not with store=False")
        self.url = url
        self.model = model
        self.options = dict(options or {})
        self.tools = tools
        self.system = system
        self.timeout = timeout
        self.resume_timeout = resume_timeout
        self.on_event = on_event
        self.store = store
        self._api = Api(url, token=token, cookie=owner_cookie, timeout=timeout)
        self.history: list[dict[str, Any]] = []
        self.last_result: dict[str, Any] | None = None
        self._conversation_id: str | None = None
        # The stored conversation's last message on this client's branch: what the
        # next request follows (None: a new root).
        self.leaf_id: str | None = None
        # The conversation connect() loads, until it has.
        self._to_load = conversation_id
        self._introduced = False
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
        for event in ("chunk", "done", "error", "retract"):
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
        if self._to_load is not None:
            # Its answer introduces an anonymous client as well.
            self.load(self._to_load)
        elif self.store and not self.token and not self._introduced:
            self._api.introduce()
        self._introduced = True
        self._refusal = None
        auth = {"token": self.token} if self.token else None
        try:
            self._sio.connect(
                self.url,
                auth=auth,
                # Called again at each reconnection: the cookie of the moment.
                headers=self._handshake_headers,
                wait_timeout=self.timeout,
            )
        except (socketio.exceptions.SocketIOError, ValueError) as exc:
            refusal = self._refusal
            if isinstance(refusal, dict) and "message" in refusal:
                # The server itself said no: its reason and code beat
                # python-socketio's "namespaces failed to connect" or "unexpected
                # status code". A refused Socket.IO connect (a missing token, too
                # many connections) carries them in ``data``; a refused handshake
                # (server_full, handshake_rate_limited) in the HTTP body itself.
                details = refusal.get("data", refusal)
                if not isinstance(details, dict):
                    details = {}
                raise ChatConnectionError(
                    str(details.get("code") or "connection_refused"),
                    f"{self.url} refused the connection: {refusal['message']}",
                    retryable=bool(details.get("retryable", False)),
                ) from exc
            raise ChatConnectionError(
                "connection_failed",
                f"cannot connect to {self.url}: {reason(exc)}",
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

    @property
    def token(self) -> str | None:
        """The auth token, sent as the Socket.IO ``auth`` and as the REST API's
        Bearer token; it names the owner of the stored conversations."""
        return self._api.token

    @token.setter
    def token(self, value: str | None) -> None:
        self._api.token = value

    @property
    def owner_cookie(self) -> str | None:
        """The anonymous owner cookie's value (None with a token, or before the
        server gave one): keep it to reach the same conversations later."""
        return None if self.token else self._api.cookie

    @property
    def conversation_id(self) -> str | None:
        """The stored conversation this client is in; None before the first answer
        of a new one, and when the server keeps nothing."""
        return self._conversation_id

    def _handshake_headers(self) -> dict[str, str]:
        # The token goes in the auth payload; the handshake carries the cookie.
        return {} if self.token else self._api.headers()

    # Stored conversations

    def conversations(
        self, q: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """This owner's stored conversations, newest first, as the server lists
        them: ``{id, title, model, created_at, updated_at, current_leaf_id}``.

        ``q``: only those whose title or messages hold these words. ``limit``: at
        most this many. Raises ``ChatError`` (``unauthorized``, or
        ``history_unavailable`` when the server cannot read its store, retryable),
        ``ChatConnectionError`` when the server cannot be reached."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError("limit must be a positive integer")
        if q is not None and not isinstance(q, str):
            raise ValueError("q must be text")
        return self._api.conversations(q, limit)

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        """A stored conversation with every message, all branches, oldest first
        (``messages``: ``{id, parent_id, role, content, …}``); ``current_leaf_id``
        ends the branch in view. ``ChatError("not_found")`` when this owner has
        no such conversation."""
        _check_conversation_id(conversation_id)
        return self._api.conversation(conversation_id)

    def load(self, conversation_id: str) -> dict[str, Any]:
        """Go on with a stored conversation: its current branch becomes the history
        and the next request follows its last message. Returns the conversation
        (as ``conversation``). ``ChatError("not_found")`` leaves the client as it
        was."""
        if self._live is not None:
            raise RuntimeError("this client is streaming an answer")
        if not self.store:
            raise ValueError("load: not with store=False")
        found = self.conversation(conversation_id)
        branch = _branch(found)
        self.history[:] = [_history_message(m) for m in branch if _sendable(m)]
        self._conversation_id = str(found.get("id") or conversation_id)
        self.leaf_id = branch[-1]["id"] if branch else None
        self.last_result = None
        self._to_load = None
        return found

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

    @overload
    def stream(
        self,
        prompt: str | None = ...,
        *,
        model: str | None = ...,
        options: dict[str, Any] | None = ...,
        tools: list[dict[str, Any]] | None = ...,
        images: Sequence[ImageSource] | None = ...,
        tool_results: Mapping[str, str] | None = ...,
        reasoning: Literal[False] = ...,
    ) -> Iterator[str]: ...

    @overload
    def stream(
        self,
        prompt: str | None = ...,
        *,
        model: str | None = ...,
        options: dict[str, Any] | None = ...,
        tools: list[dict[str, Any]] | None = ...,
        images: Sequence[ImageSource] | None = ...,
        tool_results: Mapping[str, str] | None = ...,
        reasoning: Literal[True],
    ) -> Iterator[Delta]: ...

    def stream(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        images: Sequence[ImageSource] | None = None,
        tool_results: Mapping[str, str] | None = None,
        reasoning: bool = False,
    ) -> Iterator[str] | Iterator[Delta]:
        """Send ``prompt`` in the conversation and yield the answer's text as it
        comes.

        With ``reasoning=True`` it yields ``Delta(kind, text)`` pairs instead, in
        the order the model wrote them: ``kind`` is ``"reasoning"`` for a reasoning
        model's reasoning, which comes first, and ``"answer"`` for the answer::

            for kind, text in chat.stream("Why is the sky blue?", reasoning=True):
                print(text, end="", flush=True)

        A refusal the model gives in place of an answer is yielded as answer text
        (``Delta("refusal", text)`` with ``reasoning=True``), and kept in
        ``last_result["refusal"]``. Tool calls are yielded with ``reasoning=True``
        only: ``Delta("tool_call", arguments_piece)``, whose ``tool_call`` names
        the call (``index``, ``id``, ``name``); ``last_result["tool_calls"]`` holds
        them whole.

        ``tools`` (``tool_choice`` and any other request field go in ``options``)
        lets the model call tools. An answer that does joins the history with its
        calls, which wait for their results: ``stream(tool_results={call_id:
        output})``, with no prompt, sends one ``tool`` message per call, in the
        order of the calls, and streams the model's next turn. A ``ValueError``
        refuses results that do not answer exactly the waiting calls, and a new
        prompt while calls wait.

        ``images``: local image files (sent as ``data:`` URLs, up to
        ``MAX_IMAGE_BYTES`` each) or ``http(s)://`` URLs, attached to the prompt;
        the history keeps them, and sends them again with every request.

        At ``done`` the exchange joins the history (the answer's text only, never
        the reasoning) and ``last_result`` holds the ``done`` payload and the
        reasoning text (in a stored conversation, with its ``conversation_id`` and
        ``answer_id``). A failure raises ``ChatError`` and leaves the history as it
        was; in a stored conversation the next request follows the last answer
        that did join it, so the failed exchange stays a branch of its own on the
        server (``history_unavailable``, retryable: the server could not store the
        conversation, before the request went upstream or, the answer streamed
        whole, after). Leaving the loop early cancels the request, as ``stop()``
        does: the partial answer joins the history (unless it is empty, as it is
        while the model is still reasoning: the server refuses empty turns),
        without any tool call it had begun.

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
        turns = self._turns(prompt, images, tool_results)
        payload = self._where(turns)
        model = model if model is not None else self.model
        if model is not None:
            payload["model"] = model
        merged = dict(self.options)
        if self.tools is not None:
            merged["tools"] = self.tools
        merged.update(options or {})
        if tools is not None:
            merged["tools"] = tools
        if merged:
            payload["options"] = merged

        if not self._sio.connected and self._reconnecting:
            # Dropped between requests: give the reconnection a moment.
            self._connected.wait(self.timeout)
        request = _Request()
        payload = {"id": request.id, **payload}
        start = len(self.history)
        self.history.extend(turns)
        self._live = request
        # Registered before the emit: a chunk may arrive before the ack.
        with self._requests_lock:
            self._requests[request.id] = request
        try:
            self._emit("chat", payload, partial(self._dispatch, "ack", request=request))
            while request.result is None:
                try:
                    step = self._next_step(request, *self._bound(request))
                except _GapPersists:
                    self._fill_gap(request)
                    continue
                if step.failure is not None:
                    if step.event == "error" and not request.ack_consumed:
                        # A rejected chat gets an error event and then a negative
                        # ack; wait for the ack so that on_event sees both.
                        self._drain(request, lambda: request.ack_consumed)
                    raise step.failure
                for delta in step.ready:
                    if reasoning:
                        yield delta
                    elif delta.kind in (ANSWER, REFUSAL):
                        yield delta.text
        except GeneratorExit:
            # The consumer left early: cancel, then wait briefly for the done so
            # that the history gets the partial answer and the server frees the
            # slot before the next request (it caps requests per connection).
            self._request_stop(request)
            self._drain(request, lambda: request.result is not None)
            raise
        except ChatError as exc:
            if exc.code == "lost_chunks":
                # The client gave up, not the server, which may still be generating
                # what nobody will read. Its ack is awaited (briefly): a connection
                # closed right after may otherwise be handled before the stop.
                self._request_stop(request)
                self._drain(request, lambda: request.stop_acked)
            raise  # otherwise the server (or the connection) has already ended it
        except BaseException:
            # A KeyboardInterrupt or a failing on_event leaves the request running.
            self._request_stop(request)
            raise
        finally:
            with self._requests_lock:
                self._requests.pop(request.id, None)
            self._live = None
            self._settle(start, turns, request)

    def ask(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        images: Sequence[ImageSource] | None = None,
        tool_results: Mapping[str, str] | None = None,
    ) -> str:
        """The whole answer to ``prompt`` (or to ``tool_results``), as ``stream``
        would yield it; any reasoning is in ``last_result["reasoning"]``, any tool
        calls in ``last_result["tool_calls"]``."""
        return "".join(
            self.stream(
                prompt,
                model=model,
                options=options,
                tools=tools,
                images=images,
                tool_results=tool_results,
            )
        )

    @property
    def pending_tool_calls(self) -> list[dict[str, Any]]:
        """The last answer's tool calls while they wait for their results
        (``stream(tool_results=...)``), in OpenAI's shape; ``[]`` when none do."""
        last = self.history[-1] if self.history else {}
        if last.get("role") != "assistant":
            return []
        return list(last.get("tool_calls") or [])

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
        """Forget the conversation (``system`` stays): the next request starts a
        new one. A stored conversation stays on the server."""
        self.history.clear()
        self.last_result = None
        self._conversation_id = None
        self.leaf_id = None
        self._to_load = None

    # Internals

    def _turns(
        self,
        prompt: str | None,
        images: Sequence[ImageSource] | None,
        tool_results: Mapping[str, str] | None,
    ) -> list[dict[str, Any]]:
        """The messages a request adds to the history, or ``ValueError`` saying
        what is wrong with the arguments."""
        pending = self.pending_tool_calls
        if tool_results is not None:
            if prompt is not None or images:
                raise ValueError(
                    "tool_results goes alone: no prompt or images with it (the "
                    "model's next turn answers the results)"
                )
            return self._tool_turns(pending, tool_results)
        if prompt is None:
            raise ValueError("a prompt is needed, or tool_results for tool calls")
        if pending:
            ids = ", ".join(repr(call["id"]) for call in pending)
            raise ValueError(
                f"the last answer's tool calls ({ids}) wait for their results: "
                "send them with tool_results={call_id: output} first (or reset())"
            )
        if isinstance(images, (str, bytes)):
            raise ValueError("images must be a list of paths or URLs")
        if not images:
            return [{"role": "user", "content": prompt}]
        parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        parts += [
            {"type": "image_url", "image_url": {"url": image_url(image)}}
            for image in images
        ]
        return [{"role": "user", "content": parts}]

    def _where(self, turns: list[dict[str, Any]]) -> dict[str, Any]:
        """The request's messages and where the server keeps them: in a stored
        conversation the new turns only, after the client's last answer; else the
        whole history, which a new conversation then holds."""
        system = (
            [] if self.system is None else [{"role": "system", "content": self.system}]
        )
        if self._conversation_id is not None:
            return {
                "conversation_id": self._conversation_id,
                "parent_id": self.leaf_id,
                "messages": [*system, *turns],
            }
        payload: dict[str, Any] = {"messages": [*system, *self.history, *turns]}
        if not self.store:
            payload["store"] = False
        return payload

    @staticmethod
    def _tool_turns(
        pending: list[dict[str, Any]], results: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        if not isinstance(results, Mapping):
            raise ValueError("tool_results must map each call's id to its output")
        if not pending:
            raise ValueError("tool_results: no tool calls wait for results")
        ids = [call["id"] for call in pending]
        missing = [call_id for call_id in ids if call_id not in results]
        unknown = [call_id for call_id in results if call_id not in ids]
        if missing or unknown:
            problems = []
            if missing:
                problems.append("no result for " + ", ".join(map(repr, missing)))
            if unknown:
                problems.append("no call waits for " + ", ".join(map(repr, unknown)))
            raise ValueError(
                "tool_results must answer exactly the calls that wait ("
                + ", ".join(map(repr, ids))
                + "): "
                + "; ".join(problems)
            )
        for call_id in ids:
            if not isinstance(results[call_id], str):
                raise ValueError(
                    f"tool_results[{call_id!r}] must be text (json.dumps a value)"
                )
        return [
            {"role": "tool", "tool_call_id": call_id, "content": results[call_id]}
            for call_id in ids
        ]

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

    def _bound(self, request: _Request) -> tuple[float | None, ChatError | None]:
        """When waiting for the next event must end, and the error it ends with."""
        with request.lock:
            answer = request.answer
            away_since, gap_since = answer.away_since, answer.gap_since
            answered = answer.answered
        if away_since is not None:
            return away_since + self.resume_timeout, ChatConnectionError(
                "disconnected",
                "the connection dropped and could not be resumed within "
                f"{self.resume_timeout:g}s",
                retryable=True,
            )
        if gap_since is not None:
            return gap_since + GAP_SECONDS, _GapPersists()
        if not answered:
            # Until the server answers at all, a lost request must not hang us;
            # after that the server's own upstream timeouts bound the wait.
            return time.monotonic() + self.timeout, ChatError(
                "timeout",
                f"no answer from the server within {self.timeout:g}s",
                retryable=True,
            )
        return None, None

    def _fill_gap(self, request: _Request) -> None:
        """Ask again, on this connection, for the chunks after the last contiguous
        one; the server replays them (and the end, if it came); duplicates drop."""
        with request.lock:
            answer = request.answer
            if answer.gap_since is None:
                return  # filled while the bound ran out
            if answer.gap_resumes >= GAP_RESUMES:
                raise answer.lost(
                    f"still missing after {GAP_RESUMES} resumes of "
                    f"{GAP_SECONDS:g}s each"
                )
            token, after = request.resume_point()
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

    def _next_step(
        self,
        request: _Request,
        deadline: float | None = None,
        late: ChatError | None = None,
    ) -> _Step:
        """The next step of ``request`` for its stream, which alone calls this."""
        while True:
            wait = _POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise late or ChatError("timeout", "no answer", retryable=True)
            try:
                step = request.steps.get(timeout=wait)
            except queue.Empty:
                # The disconnect handler tells the requests it knows of; this
                # catches a chat sent as the connection dropped, which no resume
                # can save (no ack, no token).
                if request.token is None and not self._sio.connected:
                    with request.lock:
                        step = request.take(
                            "disconnected", {"reason": "connection lost"}
                        )
                else:
                    continue
            if self.on_event is not None and step.event != "disconnected":
                self.on_event(step.event, step.data)
            # After on_event: an event it failed on was not consumed.
            if step.event == "ack":
                request.ack_consumed = True
            if step.result is not None:
                request.result = step.result
            return step

    def _drain(self, request: _Request, until: Callable[[], bool]) -> None:
        """Consume steps without yielding them, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        # A failure ends the wait: it is already known or moot.
        with contextlib.suppress(ChatError):
            while not until():
                if self._next_step(request, deadline).failure is not None:
                    return

    def _settle(
        self, start: int, turns: list[dict[str, Any]], request: _Request
    ) -> None:
        """Record a finished exchange, or take back the turns of a failed one."""
        # Unless reset() (or another change) came in between.
        ours = list(map(id, self.history[start:])) == list(map(id, turns))
        result = request.result  # as the stream consumed it
        text, calls = "", []
        if result is not None:
            with request.lock:
                answer = request.answer
                text, calls = answer.text, answer.tool_calls
                self.last_result = {
                    **result,
                    "reasoning": answer.reasoning,
                    "refusal": answer.refusal,
                    "tool_calls": calls,
                }
            if result.get("finish_reason") in _CUT_SHORT:
                # A call cut short is no call the model made: its arguments may
                # be incomplete, and it would wait for a result.
                calls = []
        if not ours:
            return
        if result is not None and (text or calls):
            # OpenAI's shape: no text beside tool calls is null content.
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = copy.deepcopy(calls)
            self.history.append(message)
            if request.conversation_id is not None and request.answer_id is not None:
                # Taken on a completed exchange only: a conversation whose first
                # exchange failed holds none of the history this client keeps, so
                # the next request starts a new one.
                self._conversation_id = request.conversation_id
                self.leaf_id = request.answer_id
        else:
            # Failed, or stopped before any text: the server rejects an empty turn.
            del self.history[start:]

    def _registered(self) -> list[_Request]:
        with self._requests_lock:
            return list(self._requests.values())

    def _dispatch(
        self, event: str, data: Any = None, request: _Request | None = None
    ) -> None:
        """Apply an event to its request's answer and queue the step for its stream.

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
                started = True
            elif event in ("ack", "resume_ack") and data.get("ok"):
                if event == "ack":
                    request.token = data.get("resume_token")
                    request.conversation_id = _text(data.get("conversation_id"))
                    request.answer_id = _text(data.get("answer_id"))
                started = True
            elif event == "stop_ack":
                request.stop_acked = True
            elif event == "disconnected":
                # A new connection knows the id only once resumed, and a stop sent
                # as the old one dropped may never have arrived.
                request.started = False
                request.stop_sent = False
            # Queued under the lock: the stream sees the steps in the order they
            # were applied.
            request.steps.put(request.take(event, data))
        if started:
            self._mark_started(request)

    def _on_connect(self) -> None:
        """Resume the requests a dropped connection left, on this new one."""
        self._reconnecting = False
        for request in self._registered():
            with request.lock:
                token, after = request.resume_point()
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


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _check_conversation_id(conversation_id: Any) -> None:
    if not isinstance(conversation_id, str) or not 0 < len(conversation_id) <= 64:
        raise ValueError("conversation_id must be a string of 1-64 characters")


def _branch(conversation: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages from the root to the conversation's current leaf, in order."""
    messages = conversation["messages"]
    by_id = {m.get("id"): m for m in messages if isinstance(m, dict)}
    branch: list[dict[str, Any]] = []
    at = conversation.get("current_leaf_id")
    if at is None and messages:
        at = messages[-1].get("id") if isinstance(messages[-1], dict) else None
    while at is not None:
        message = by_id.pop(at, None)  # popped: a cycle cannot loop for ever
        if message is None:
            raise ChatError(
                "bad_response",
                f"conversation {conversation.get('id')!r}: message {at!r} of its "
                "branch is missing",
            )
        branch.append(message)
        at = message.get("parent_id")
    branch.reverse()
    return branch


def _sendable(stored: dict[str, Any]) -> bool:
    # An answer that ended before any text (failed, or stopped while the model
    # reasoned) is not sent to the model: the history leaves it out too.
    return stored.get("role") != "assistant" or bool(
        stored.get("content") or stored.get("tool_calls")
    )


def _history_message(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored message as the history holds it: OpenAI's shape."""
    message: dict[str, Any] = {"role": stored["role"], "content": stored.get("content")}
    if stored.get("tool_calls"):
        message["tool_calls"] = stored["tool_calls"]
        message["content"] = message["content"] or None
    if stored.get("tool_call_id"):
        message["tool_call_id"] = stored["tool_call_id"]
    return message
