"""The relay: runs each accepted request's generation and streams it to its client.

Every event here is emitted with ``to=<the stream's sid>``; nothing is broadcast. A
request ends exactly once, with ``done`` or ``error``: whichever of the generation, a
``stop``, a failure or shutdown gets to ``_end`` first wins, under the stream's lock,
and no chunk is sent after that. Chunks are kept, so a client that lost its connection
can ``resume`` and get every chunk it missed, in order, before the live ones.
"""

import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from engineio.packet import MESSAGE
from engineio.packet import Packet as EioPacket
from flask_socketio import SocketIO
from limits import parse as parse_limit
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from . import tokens
from .breaker import CircuitBreaker
from .cluster import Cluster
from .coalesce import TICK, Coalescer
from .metrics import Metrics
from .protocol import ChatRequest, Limits, ProtocolError
from .providers import Provider, Result, UpstreamError
from .streams import Event, MemoryStreamStore, Stream

log = logging.getLogger(__name__)

# Failures that say the upstream is down, as opposed to refusing one request: these
# trip the circuit breaker, and are retried while the client has seen no text.
_OUTAGE_CODES = {"upstream_unavailable", "upstream_timeout"}

# Compact JSON, as python-socketio writes its packets; one encoder, made once.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class Relay:
    def __init__(
        self,
        socketio: SocketIO,
        provider: Provider,
        config: Mapping[str, Any],
        cluster: Cluster | None = None,
    ):
        self.socketio = socketio
        self.provider = provider
        self.system_prompt: str = config["SYSTEM_PROMPT"]
        self.max_per_connection: int = config["MAX_CONCURRENT_PER_CONNECTION"]
        self.max_per_identity: int = config["MAX_STREAMS_PER_IDENTITY"]
        self.resume_grace: float = config["RESUME_GRACE_SECONDS"]
        self.max_retries: int = config["UPSTREAM_MAX_RETRIES"]
        self.limits = Limits(
            models=list(provider.models),
            default_model=provider.default_model,
            max_messages=config["MAX_MESSAGES"],
            max_prompt_chars=config["MAX_PROMPT_CHARS"],
            max_tokens_cap=config["MAX_TOKENS_CAP"],
        )
        self.rate = parse_limit(f"{config['CHATS_PER_MINUTE']}/minute")
        # With several nodes the allowance is shared through Redis.
        # A sliding-window counter: two numbers per user, however many chats.
        self.rate_limiter = SlidingWindowCounterRateLimiter(
            storage_from_string(config["STREAM_STORE_URL"])
            if cluster is not None
            else ReapedMemoryStorage()
        )
        self.breaker = CircuitBreaker(
            config["UPSTREAM_FAILURES_TO_TRIP"], config["UPSTREAM_COOLDOWN_SECONDS"]
        )
        self.cluster = cluster
        self.store = cluster.store if cluster is not None else MemoryStreamStore()
        self.coalescer = Coalescer(
            config["COALESCE_WINDOW_MS"] / 1000,
            socketio.start_background_task,
            socketio.sleep,
            self._flush_held,
        )
        pace_with = getattr(provider, "pace_with", None)
        if pace_with is not None:
            pace_with(self.coalescer.current_window)
        if cluster is not None:
            cluster.handlers["resume"] = self._resume_for_peer
            cluster.handlers["stop"] = self._stop_for_peer
            cluster.on_owner_lost = self._owner_lost
        self.identities: dict[str, str] = {}
        self.metrics = Metrics()
        self.metrics.connections.set_function(lambda: len(self.identities))
        self.metrics.active_streams.set_function(self.live_count)
        self.metrics.loop_lag.set_function(lambda: self.coalescer.lag)
        self.metrics.coalescing.set_function(
            lambda: float(self.coalescer.current_window() > 0)
        )
        self.accepting = True
        self._reaper_started = False
        self._reaper_lock = threading.Lock()

    # -- what the event handlers call --------------------------------------------------

    def connect(self, sid: str, identity: str) -> None:
        self.identities[sid] = identity

    def start(self, sid: str, request: ChatRequest) -> Stream:
        """Accept a request for ``sid`` and start generating in the background."""
        if not self.accepting:
            raise ProtocolError(
                "shutting_down", "the server is restarting; retry shortly", request.id
            )
        identity = self.identities.get(sid, "unknown")
        if not self._within_rate(identity):
            raise ProtocolError(
                "rate_limited",
                f"more than {self.rate.amount} chats a minute; wait and retry",
                request.id,
            )
        wait = self.breaker.allow()
        if wait is not None:
            raise ProtocolError(
                "upstream_unavailable",
                f"the upstream is failing; retry in {wait:.0f} s",
                request.id,
            )
        messages = request.messages
        if self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        stream = Stream(sid, identity, request, messages)
        try:
            self.store.add(stream, self.max_per_connection, self.max_per_identity)
        except LookupError:
            raise _already_live(request.id) from None
        except OverflowError as full:
            where, cap = (
                ("this connection", self.max_per_connection)
                if str(full) == "connection"
                else ("this user", self.max_per_identity)
            )
            raise ProtocolError(
                "busy",
                f"{where} already runs {cap} generations; wait for one to end "
                "or stop one",
                request.id,
            ) from None
        self.metrics.requests.inc()
        self.coalescer.start()
        self.socketio.start_background_task(self._run, stream)
        return stream

    def _within_rate(self, identity: str) -> bool:
        try:
            return self.rate_limiter.hit(self.rate, identity)
        except Exception as exc:
            # The shared limiter's Redis is away: serve rather than refuse everyone.
            log.warning("rate limiter unavailable (%s); allowing", exc)
            return True

    def stop(self, sid: str, request_id: str) -> None:
        """End a live request now with ``done`` (cancelled).

        Its worker closes the upstream stream when it next wakes."""
        stream = self.store.live(sid, request_id)
        if (
            stream is None
            and self.cluster is not None
            and self._stop_remote(sid, request_id)
        ):
            return
        if stream is None:
            raise ProtocolError(
                "unknown_id",
                f"id: no live request {request_id!r} on this connection",
                request_id,
            )
        self._finish(stream, "cancelled")

    def resume(
        self,
        sid: str,
        request_id: str,
        token: str,
        after: int,
        identity: str | None = None,
    ) -> int:
        """Send ``sid`` every chunk after ``after``, then the live ones (or the end).

        Returns how many chunks were replayed."""
        identity = identity or self.identities.get(sid, "unknown")
        stream = self.store.by_token(token)
        if stream is None and self.cluster is not None:
            return self._resume_remote(sid, request_id, token, after, identity)
        if (
            stream is None
            or stream.id != request_id
            or stream.abandoned
            or not _may_resume(identity, stream.identity)
        ):
            raise _denied(request_id)
        with stream.lock:
            if after > len(stream.parts) - 1:
                raise ProtocolError(
                    "invalid_request",
                    f"after: {after} is beyond the last chunk sent "
                    f"({len(stream.parts) - 1})",
                    request_id,
                )
            try:
                self.store.attach(stream, sid)
            except LookupError:
                raise _already_live(request_id) from None
            missing = stream.chunks_after(after)
            for chunk in missing:
                self._emit("chunk", chunk, sid)
            if stream.terminal is not None:
                self._emit(*stream.terminal, sid)
                stream.expires_at = time.monotonic() + self.resume_grace
        self.metrics.resumes.inc()
        log.info("request %s resumed after seq %d", request_id, after)
        return len(missing)

    def disconnect(self, sid: str) -> None:
        """The disconnect policy: a vanished client's generations go on for the resume
        grace window, kept for it to resume; then they are abandoned, which closes the
        upstream stream so that nobody pays for an answer nobody will read."""
        self.identities.pop(sid, None)
        if self.cluster is not None:
            self.cluster.unwatch_sid(sid)
        streams = self.store.detach_all(sid)
        deadline = time.monotonic() + self.resume_grace
        for stream in streams:
            with stream.lock:
                if self.resume_grace <= 0:
                    stream.abandoned = True
                    self.store.drop(stream)
                elif not stream.ended:
                    stream.expires_at = deadline
        if streams:
            self._ensure_reaper()
            log.info("client %s gone with %d live generation(s)", sid, len(streams))

    def shutdown(self, grace: float) -> None:
        """Refuse new chats, let running ones finish for ``grace`` seconds, then end
        the rest with a retryable error."""
        self.accepting = False
        deadline = time.monotonic() + grace
        while self.store.live_streams() and time.monotonic() < deadline:
            self.socketio.sleep(0.1)
        for stream in self.store.live_streams():
            self._fail(
                stream, "shutting_down", "the server is restarting; retry shortly"
            )

    def connected(self) -> list[str]:
        return list(self.identities)

    def live_count(self) -> int:
        return len(self.store.live_streams())

    # -- the generation ----------------------------------------------------------------

    def _run(self, stream: Stream) -> None:
        attempt = 0
        while True:
            try:
                self._generate(stream)
                return
            except UpstreamError as exc:
                if exc.code in _OUTAGE_CODES:
                    self.breaker.failure()
                # Retry only while the client has seen nothing: never repeat text.
                if (
                    exc.code in _OUTAGE_CODES
                    and not stream.parts
                    and attempt < self.max_retries
                ):
                    attempt += 1
                    self.socketio.sleep(_backoff(attempt))
                    if not stream.ended:
                        continue
                self._fail(stream, exc.code, exc.message)
                return
            except Exception:
                log.exception("generation %s failed", stream.id)
                self._fail(stream, "internal", "the server failed while answering")
                return

    def _generate(self, stream: Stream) -> None:
        generation = self.provider.stream(stream.request, stream.messages)
        try:
            while not stream.ended:
                try:
                    delta = next(generation)
                except StopIteration as end:
                    result: Result = end.value
                    self.breaker.success()
                    self._finish(stream, result.finish_reason, result)
                    return
                if delta:
                    self._send_chunk(stream, delta)
        finally:
            # Closing the generator closes the upstream HTTP stream.
            generation.close()

    def _send_chunk(self, stream: Stream, delta: str) -> None:
        with stream.lock:
            if stream.ended:
                return
            if stream.first_token_at is None:
                # The first chunk always leaves at once.
                self.metrics.ttft.observe(time.monotonic() - stream.started)
            else:
                window = self.coalescer.current_window()
                if window and (
                    stream.pending
                    or time.monotonic() - stream.last_frame_at < window - TICK
                ):
                    # At most one event per window while busy: this text waits
                    # for the stream's next one.
                    if not stream.pending:
                        self.coalescer.hold(stream, stream.last_frame_at + window)
                    stream.pending.append(delta)
                    return
            self._send_frame(stream, delta)

    def _flush_held(self, stream: Stream) -> None:
        with stream.lock:
            if stream.pending and not stream.ended:
                self._send_frame(stream)

    def _send_frame(self, stream: Stream, delta: str = "") -> None:
        """Send held chunks and ``delta`` as one chunk event (caller holds the lock)."""
        if stream.pending:
            if len(stream.pending) > 1 or delta:
                self.metrics.coalesced.inc()
            delta = "".join(stream.pending) + delta
            stream.pending.clear()
        seq = stream.append(delta)
        stream.last_frame_at = time.monotonic()
        self.metrics.chunks.inc()
        self.store.touched(stream)
        if stream.sid is not None:
            self._emit(
                "chunk", {"id": stream.id, "seq": seq, "delta": delta}, stream.sid
            )

    def _finish(
        self, stream: Stream, finish_reason: str, result: Result | None = None
    ) -> None:
        payload = {
            "id": stream.id,
            "finish_reason": finish_reason,
            "usage": None,
            "timing": None,
            "model": result.model if result else stream.request.model,
        }
        if self._end(stream, "done", payload, result):
            log.info(
                "request %s finished: %s, %d tokens",
                stream.id,
                finish_reason,
                payload["usage"]["completion_tokens"],
            )

    def _fail(self, stream: Stream, code: str, message: str) -> None:
        payload = ProtocolError(code, message, stream.id).payload()
        if self._end(stream, "error", payload):
            log.warning("request %s failed: %s: %s", stream.id, code, message)

    def _end(
        self,
        stream: Stream,
        event: str,
        payload: dict[str, Any],
        result: Result | None = None,
    ) -> bool:
        """Send the terminal event unless the stream has ended already."""
        with stream.lock:
            if stream.ended:
                return False
            if stream.pending:
                self._send_frame(stream)
            if event == "done":
                now = time.monotonic()
                # So a client whose library may hand it events out of order knows
                # how many chunks to wait for.
                payload["chunks"] = len(stream.parts)
                payload["usage"] = _usage(stream, result)
                payload["timing"] = {
                    "ttft_ms": _ms(stream.first_token_at, stream.started),
                    "total_ms": _ms(now, stream.started),
                }
            stream.terminal = (event, payload)
            if event == "done":
                self.metrics.finished.labels(payload["finish_reason"]).inc()
            else:
                self.metrics.errors.labels(payload["code"]).inc()
            # Kept for the grace window, for a client that misses the end to resume.
            stream.expires_at = time.monotonic() + self.resume_grace
            if stream.sid is not None:
                self._emit(event, payload, stream.sid)
        self.store.ended(stream)
        self._ensure_reaper()
        return True

    def _emit(self, event: str, payload: dict[str, Any], sid: str) -> None:
        server = self.socketio.server
        if self.cluster is not None and not server.manager.is_connected(sid, "/"):
            # A client on another node: through the message queue.
            self.socketio.emit(event, payload, to=sid)
            return
        # A client of this node gets its events directly: no Redis round trip, no
        # other node decoding them, and none of the emit machinery for rooms,
        # callbacks and binary attachments, which one text event to one client does
        # not need (it was a quarter of the relay's time under load). The packet is
        # Socket.IO's EVENT in the default namespace, as python-socketio writes it,
        # handed to Engine.IO the way python-socketio's manager hands each one.
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            text = "2" + _encode([event, payload])
            server._send_eio_packet(eio_sid, EioPacket(MESSAGE, text))

    # -- several nodes -----------------------------------------------------------------

    def _resume_remote(
        self, sid: str, request_id: str, token: str, after: int, identity: str
    ) -> int:
        """Resume a stream this node does not hold: through its owner, or, when the
        owner is gone, from the mirror, ending with a retryable error."""
        assert self.cluster is not None
        store = self.cluster.store
        meta = store.mirrored(token)
        if (
            meta is None
            or meta["id"] != request_id
            or not _may_resume(identity, meta["identity"])
        ):
            raise _denied(request_id)
        if not meta["terminal"] and store.alive(meta["node"]):
            result = self.cluster.ask(
                meta["node"],
                {
                    "op": "resume",
                    "token": token,
                    "id": request_id,
                    "sid": sid,
                    "after": after,
                    "identity": identity,
                },
            )
            if result["ok"]:
                self.cluster.watch(token, sid)
                self.metrics.resumes.inc()
                return result["value"]
            if result["code"] != "timeout":
                raise ProtocolError(result["code"], result["message"], request_id)
            # The owner did not answer: treat it as gone.
        chunks = store.mirrored_chunks(token, after)
        for seq, delta in enumerate(chunks, start=after + 1):
            self._emit("chunk", {"id": request_id, "seq": seq, "delta": delta}, sid)
        terminal: Event = (
            tuple(json.loads(meta["terminal"]))  # type: ignore[assignment]
            if meta["terminal"]
            else ("error", _interrupted(request_id))
        )
        self._emit(*terminal, sid)
        self.metrics.resumes.inc()
        return len(chunks)

    def _resume_for_peer(self, message: dict[str, Any]) -> int:
        return self.resume(
            message["sid"],
            message["id"],
            message["token"],
            message["after"],
            message["identity"],
        )

    def _stop_remote(self, sid: str, request_id: str) -> bool:
        assert self.cluster is not None
        store = self.cluster.store
        token = store.token_for(sid, request_id)
        meta = store.mirrored(token) if token else None
        if token is None or meta is None or meta["terminal"]:
            return False
        if not store.alive(meta["node"]):
            return False
        self.cluster.send(meta["node"], {"op": "stop", "token": token})
        return True

    def _stop_for_peer(self, message: dict[str, Any]) -> None:
        stream = self.store.by_token(message["token"])
        if stream is not None:
            self._finish(stream, "cancelled")

    def _owner_lost(self, token: str, sid: str, meta: dict[str, str]) -> None:
        log.warning("node %s died with request %s in flight", meta["node"], meta["id"])
        self._emit("error", _interrupted(meta["id"]), sid)

    # -- expiry ------------------------------------------------------------------------

    def _ensure_reaper(self) -> None:
        with self._reaper_lock:
            if self._reaper_started:
                return
            self._reaper_started = True
        self.socketio.start_background_task(self._reap_forever)

    def _reap_forever(self) -> None:
        interval = min(1.0, max(self.resume_grace / 4, 0.05))
        while True:
            self.socketio.sleep(interval)
            try:
                self.reap(time.monotonic())
            except Exception:
                log.exception("reaping expired streams failed")

    def reap(self, now: float) -> None:
        """Abandon generations whose client did not come back; forget ended ones."""
        if isinstance(self.rate_limiter.storage, ReapedMemoryStorage):
            self.rate_limiter.storage.expire()
        for stream in self.store.expired(now):
            with stream.lock:
                if stream.expires_at is None or stream.expires_at > now:
                    continue  # resumed meanwhile
                if not stream.ended:
                    stream.abandoned = True
                    self.metrics.abandoned.inc()
                    log.info(
                        "request %s abandoned: its client did not resume", stream.id
                    )
                self.store.drop(stream)


class ReapedMemoryStorage(MemoryStorage):
    """limits' in-memory storage, its expired counters dropped by the relay's reaper.

    ``MemoryStorage`` starts a timer thread 10 ms after a hit to drop them: under
    eventlet, a green thread per chat whose teardown leaves reference cycles, that
    is garbage for the cyclic collector, whose pauses make tokens late. Counters
    are still checked for expiry as they are read; this only frees stale ones."""

    def _MemoryStorage__schedule_expiry(self) -> None:
        pass

    def expire(self) -> None:
        self._MemoryStorage__expire_events()


def _may_resume(identity: str, owner: str) -> bool:
    # An anonymous client's address may change between connections (a phone moving
    # networks); the token alone decides. An authenticated one must be the same user.
    return identity.startswith("addr:") or identity == owner


def _already_live(request_id: str) -> ProtocolError:
    return ProtocolError(
        "invalid_request",
        f"id: {request_id!r} is already live on this connection",
        request_id,
    )


def _denied(request_id: str) -> ProtocolError:
    return ProtocolError(
        "resume_denied",
        f"id: no resumable request {request_id!r} with this token",
        request_id,
    )


def _interrupted(request_id: str) -> dict[str, Any]:
    return ProtocolError(
        "interrupted",
        "the server generating this answer stopped; retry",
        request_id,
    ).payload()


def _usage(stream: Stream, result: Result | None) -> dict[str, Any]:
    if result is not None and result.usage is not None:
        usage = result.usage
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "estimated": False,
        }
    # No usage from upstream (some servers never send it; a cancelled stream cannot):
    # count what was sent and received.
    prompt = tokens.count_messages(stream.messages)
    completion = tokens.count_text(stream.text())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated": True,
    }


def _backoff(attempt: int) -> float:
    # 0.25 s, 0.5 s, 1 s, … with jitter, so that retries from many clients spread out.
    return min(0.25 * 2 ** (attempt - 1), 4.0) * random.uniform(0.5, 1.0)


def _ms(end: float | None, start: float) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)
