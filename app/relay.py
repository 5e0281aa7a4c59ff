"""The relay: runs each accepted request's generation and streams it to its client.

Every event here is emitted with ``to=<the requesting sid>``; nothing is broadcast.
A request ends exactly once, with ``done`` or ``error``: whichever of the generation,
a ``stop`` or a failure gets to ``_finish`` first wins, under the stream's lock, and
no chunk is sent after that.
"""

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from flask_socketio import SocketIO

from . import tokens
from .protocol import ChatRequest, Limits, ProtocolError
from .providers import Provider, Result, UpstreamError

log = logging.getLogger(__name__)


class Stream:
    """One live request: where its answer goes and how far it has got."""

    def __init__(self, sid: str, request: ChatRequest, messages: list[dict[str, str]]):
        self.sid = sid
        self.request = request
        self.messages = messages
        self.parts: list[str] = []
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.finished = False
        self.lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.request.id


class Relay:
    def __init__(
        self, socketio: SocketIO, provider: Provider, config: Mapping[str, Any]
    ):
        self.socketio = socketio
        self.provider = provider
        self.system_prompt: str = config["SYSTEM_PROMPT"]
        self.max_concurrent: int = config["MAX_CONCURRENT_PER_CONNECTION"]
        self.limits = Limits(
            models=list(provider.models),
            default_model=provider.default_model,
            max_messages=config["MAX_MESSAGES"],
            max_prompt_chars=config["MAX_PROMPT_CHARS"],
            max_tokens_cap=config["MAX_TOKENS_CAP"],
        )
        # sid -> request id -> Stream, for the requests still streaming.
        self._live: dict[str, dict[str, Stream]] = {}
        self._lock = threading.Lock()

    # -- what the event handlers call ------------------------------------------------

    def start(self, sid: str, request: ChatRequest) -> None:
        """Accept a request for ``sid`` and start generating in the background."""
        messages = request.messages
        if self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        with self._lock:
            live = self._live.setdefault(sid, {})
            if request.id in live:
                raise ProtocolError(
                    "invalid_request",
                    f"id: {request.id!r} is already live on this connection",
                    request.id,
                )
            if len(live) >= self.max_concurrent:
                raise ProtocolError(
                    "busy",
                    f"this connection already runs {self.max_concurrent} "
                    "generations; wait for one to end or stop one",
                    request.id,
                )
            stream = live[request.id] = Stream(sid, request, messages)
        self.socketio.start_background_task(self._run, stream)

    def stop(self, sid: str, request_id: str) -> None:
        """End a live request now with ``done`` (cancelled).

        Its worker closes the upstream stream when it next wakes."""
        stream = self._live.get(sid, {}).get(request_id)
        if stream is None:
            raise ProtocolError(
                "unknown_id",
                f"id: no live request {request_id!r} on this connection",
                request_id,
            )
        self._finish(stream, "cancelled")

    def client_gone(self, sid: str) -> None:
        """The disconnect policy: a vanished client's generations end at once.

        Marking them finished makes each worker close its upstream stream at the next
        token, so nobody pays for an answer nobody will read.
        """
        with self._lock:
            streams = self._live.pop(sid, {})
        for stream in streams.values():
            with stream.lock:
                stream.finished = True
        if streams:
            log.info("client %s gone: cancelled %d generation(s)", sid, len(streams))

    def live_count(self) -> int:
        with self._lock:
            return sum(len(streams) for streams in self._live.values())

    # -- the generation ----------------------------------------------------------------

    def _run(self, stream: Stream) -> None:
        generation = self.provider.stream(stream.request, stream.messages)
        try:
            while not stream.finished:
                try:
                    delta = next(generation)
                except StopIteration as end:
                    result: Result = end.value
                    self._finish(stream, result.finish_reason, result)
                    break
                if delta:
                    self._send_chunk(stream, delta)
        except UpstreamError as exc:
            self._fail(stream, exc.code, exc.message)
        except Exception:
            log.exception("generation %s failed", stream.id)
            self._fail(stream, "internal", "the server failed while answering")
        finally:
            # Closing the generator closes the upstream HTTP stream.
            generation.close()
            self._forget(stream)

    def _send_chunk(self, stream: Stream, delta: str) -> None:
        with stream.lock:
            if stream.finished:
                return
            if stream.first_token_at is None:
                stream.first_token_at = time.monotonic()
            seq = len(stream.parts)
            stream.parts.append(delta)
            self.socketio.emit(
                "chunk", {"id": stream.id, "seq": seq, "delta": delta}, to=stream.sid
            )

    def _finish(
        self, stream: Stream, finish_reason: str, result: Result | None = None
    ) -> None:
        with stream.lock:
            if stream.finished:
                return
            stream.finished = True
            now = time.monotonic()
            payload = {
                "id": stream.id,
                "finish_reason": finish_reason,
                "usage": self._usage(stream, result),
                "timing": {
                    "ttft_ms": _ms(stream.first_token_at, stream.started),
                    "total_ms": _ms(now, stream.started),
                },
                "model": result.model if result else stream.request.model,
            }
            self.socketio.emit("done", payload, to=stream.sid)
        self._forget(stream)
        log.info(
            "request %s finished: %s, %d tokens",
            stream.id,
            finish_reason,
            payload["usage"]["completion_tokens"],
        )

    def _fail(self, stream: Stream, code: str, message: str) -> None:
        with stream.lock:
            if stream.finished:
                return
            stream.finished = True
            error = ProtocolError(code, message, stream.id)
            self.socketio.emit("error", error.payload(), to=stream.sid)
        self._forget(stream)
        log.warning("request %s failed: %s: %s", stream.id, code, message)

    def _forget(self, stream: Stream) -> None:
        with self._lock:
            live = self._live.get(stream.sid)
            if live is not None and live.get(stream.id) is stream:
                del live[stream.id]
                if not live:
                    del self._live[stream.sid]

    @staticmethod
    def _usage(stream: Stream, result: Result | None) -> dict[str, Any]:
        if result is not None and result.usage is not None:
            usage = result.usage
            return {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "estimated": False,
            }
        # No usage from upstream (some servers never send it; a cancelled stream
        # cannot): count what was sent and received.
        prompt = tokens.count_messages(stream.messages)
        completion = tokens.count_text("".join(stream.parts))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "estimated": True,
        }


def _ms(end: float | None, start: float) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)
