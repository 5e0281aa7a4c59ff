"""The relay: admits each chat request and runs its generation to one client.

Every event goes to the stream's own connection; nothing is broadcast. A request ends
exactly once, with ``done`` or ``error``: whichever of the generation, a ``stop``, a
failure or shutdown gets to ``_end`` first wins, under the stream's lock, and no chunk
is sent after that. Chunks are kept, so a client that lost its connection can
``resume`` and get every chunk it missed, in order, before the live ones.

A resume's replay goes at the pace the client reads (``replay.py``); meanwhile the
generation keeps its chunks without sending them, and the replay sends them too.

A generation reads the model a batch at a time (``providers.base``). After each chunk
event it sends, it waits out the coalescing window (``pacing.py``) before it reads
again, so a stream sends one event per window and the text that came meanwhile rides
in the next one: fewer reads, fewer frames, the same text.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flask_socketio import SocketIO
from limits import parse as parse_limit
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from . import tokens
from .auth import may_resume
from .breaker import CircuitBreaker
from .chat_request import ChatRequest, Limits
from .cluster import Cluster
from .delivery import (
    GONE,
    TRANSPORTS,
    Connection,
    LocalConnection,
    transport_of,
)
from .errors import ProtocolError, already_live, resume_denied
from .forwarding import Forwarding
from .internals import ReapedMemoryStorage
from .metrics import Metrics
from .pacing import Pacer
from .pieces import joined
from .providers import Provider, Result, UpstreamError
from .providers.base import ANSWER, REFUSAL, Batch, Piece
from .replay import KeptReplay, Paced, Replay, drained
from .stages import Halt, Stage
from .streams import Event, MemoryStreamStore, Stream, end_events

log = logging.getLogger(__name__)

# Failures that say the upstream is down, as opposed to refusing one request: these
# trip the circuit breaker, and are retried while the client has seen no text.
_OUTAGE_CODES = {"upstream_unavailable", "upstream_timeout"}


class Relay:
    def __init__(
        self,
        socketio: SocketIO,
        provider: Provider,
        config: Mapping[str, Any],
        cluster: Cluster | None = None,
        stages: Sequence[Stage] = (),
    ):
        self.socketio = socketio
        self.provider = provider
        # Called at the named points of every request (app/stages.py), in order.
        self.stages = tuple(stages)
        self.system_prompt: str = config["SYSTEM_PROMPT"]
        self.max_per_connection: int = config["MAX_CONCURRENT_PER_CONNECTION"]
        self.max_per_identity: int = config["MAX_STREAMS_PER_IDENTITY"]
        self.resume_grace: float = config["RESUME_GRACE_SECONDS"]
        self.max_retries: int = config["UPSTREAM_MAX_RETRIES"]
        self.window: float = config["COALESCE_WINDOW_MS"] / 1000
        # A replay sends this much at a time, each part once what waits for the
        # client is down to replay_low: together below MAX_QUEUED_BYTES.
        self.replay_part: int = max(1, config["MAX_QUEUED_BYTES"] // 2)
        self.replay_low: int = config["MAX_QUEUED_BYTES"] // 4
        self.limits = Limits(
            models=list(provider.models),
            default_model=provider.default_model,
            max_messages=config["MAX_MESSAGES"],
            max_prompt_chars=config["MAX_PROMPT_CHARS"],
            max_tokens_cap=config["MAX_TOKENS_CAP"],
            client_system_messages=config["CLIENT_SYSTEM_MESSAGES"],
        )
        self.rate = parse_limit(f"{config['CHATS_PER_MINUTE']}/minute")
        # With several nodes the allowance is shared through Redis.
        # A moving window: exact at any instant (a sliding counter's estimate lets
        # a user past the limit just after its window turns), at one timestamp per
        # chat of the last minute.
        self.rate_limiter = MovingWindowRateLimiter(
            storage_from_string(config["STREAM_STORE_URL"])
            if cluster is not None
            else ReapedMemoryStorage()
        )
        self.breaker = CircuitBreaker(
            config["UPSTREAM_FAILURES_TO_TRIP"], config["UPSTREAM_COOLDOWN_SECONDS"]
        )
        self.cluster = cluster
        self.store = cluster.store if cluster is not None else MemoryStreamStore()
        self.pacer = Pacer(
            socketio.start_background_task,
            socketio.sleep,
            lambda: socketio.server.eio.create_event(),
            self.window,
        )
        self.forwarding = None
        if cluster is not None:
            self.forwarding = Forwarding(self, cluster)
        # This node's connections: who they are, and where their events go.
        self.identities: dict[str, str] = {}
        self.connections: dict[str, Connection] = {}
        self.metrics = Metrics()
        self.metrics.connections.set_function(self.socketio_connections)
        for transport in TRANSPORTS:
            self.metrics.active_streams.labels(transport).set_function(
                lambda transport=transport: self.live_count(transport)
            )
        self.metrics.loop_lag.set_function(lambda: self.pacer.lag)
        self.accepting = True
        self._reaper_started = False
        self._reaper_lock = threading.Lock()

    # -- what the event handlers call --------------------------------------------------

    def connect(self, sid: str, identity: str) -> None:
        """A Socket.IO client connected to this node."""
        self.attach(sid, identity, LocalConnection(self.socketio, sid))

    def attach(self, sid: str, identity: str, connection: Connection) -> None:
        """A client connected to this node, over any transport: its requests are
        counted against ``identity``, and their events go to ``connection``."""
        self.identities[sid] = identity
        self.connections[sid] = connection

    def admit(self, sid: str, request: ChatRequest) -> Stream:
        """Accept a request for ``sid`` and start generating in the background, or
        raise ``ProtocolError`` with the reason it is refused."""
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
                retry_after=self._rate_reset(identity),
            )
        wait = self.breaker.allow()
        if wait is not None:
            raise ProtocolError(
                "upstream_unavailable",
                f"the upstream is failing; retry in {wait:.0f} s",
                request.id,
                retry_after=wait,
            )
        messages = request.messages
        if self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        stream = Stream(sid, identity, request, messages)
        try:
            self.store.add(stream, self.max_per_connection, self.max_per_identity)
        except LookupError:
            raise already_live(request.id) from None
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
        self.metrics.requests.labels(stream.transport).inc()
        self.socketio.start_background_task(self._run, stream)
        return stream

    def _within_rate(self, identity: str) -> bool:
        try:
            return self.rate_limiter.hit(self.rate, identity)
        except Exception as exc:
            # The shared limiter's Redis is away: serve rather than refuse everyone.
            log.warning("rate limiter unavailable (%s); allowing", exc)
            return True

    def _rate_reset(self, identity: str) -> float:
        """Seconds until ``identity`` may start a chat again."""
        try:
            stats = self.rate_limiter.get_window_stats(self.rate, identity)
            return max(stats.reset_time - time.time(), 1.0)
        except Exception:
            return float(self.rate.get_expiry())

    def stop(self, sid: str, request_id: str) -> None:
        """End a live request now with ``done`` (cancelled).

        Its generation closes the upstream stream when it next wakes."""
        stream = self.store.live(sid, request_id)
        if stream is None:
            if self.forwarding is not None and self.forwarding.stop(sid, request_id):
                return
            raise ProtocolError(
                "unknown_id",
                f"id: no live request {request_id!r} on this connection",
                request_id,
            )
        self.finish(stream, "cancelled")

    def resume(
        self,
        sid: str,
        request_id: str,
        token: str,
        after: int,
        identity: str | None = None,
        via: Connection | None = None,
    ) -> int:
        """Send ``sid`` every chunk after ``after``, then the live ones (or the end).

        The replay goes through ``via`` when given (another node's client, through
        that node), else straight to ``sid``'s connection. Returns how many chunks
        there were to replay."""
        identity = identity or self.identities.get(sid, "unknown")
        stream = self.store.by_token(token)
        if stream is None and self.forwarding is not None:
            return self.forwarding.resume(sid, request_id, token, after, identity)
        if (
            stream is None
            or stream.id != request_id
            or stream.abandoned
            or stream.transport != transport_of(sid)
            or not may_resume(identity, stream.identity)
        ):
            raise resume_denied(request_id)
        with stream.lock:
            previous = stream.sid
            if after > len(stream.parts) - 1 and stream.retracted is not None:
                # Chunks it held were taken back: it gets the retraction and the end.
                after = len(stream.parts) - 1
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
                raise already_live(request_id) from None
            replayed = len(stream.parts) - 1 - after
            replay = Replay(self, stream, sid, via or self.connection(sid), after + 1)
            # Live chunks and the end wait for the replay from now on.
            stream.replaying = replay
        if previous is not None and previous != sid:
            self.connection(previous).moved(request_id)
        # The first part at once (all of a short replay, as before its ack); the
        # rest as the client drains.
        if replay.step("drained", waited=False):
            self.socketio.start_background_task(self._paced, replay.connection, replay)
        self.metrics.resumes.inc()
        log.info("request %s resumed after seq %d", request_id, after)
        return replayed

    def disconnect(self, sid: str) -> None:
        """The disconnect policy: a vanished client's generations go on for the resume
        grace window, kept for it to resume; then they are abandoned, which closes the
        upstream stream so that nobody pays for an answer nobody will read. A request
        that does not survive a disconnect (an HTTP client's, unless it asked for
        ``background``) is stopped at once, its text kept for a resume."""
        self.identities.pop(sid, None)
        self.connections.pop(sid, None)
        if self.cluster is not None:
            self.cluster.unwatch_sid(sid)
        streams = self.store.detach_all(sid)
        deadline = time.monotonic() + self.resume_grace
        for stream in streams:
            with stream.lock:
                if self.resume_grace <= 0:
                    stream.abandoned = True
                    stream.abort.fire()
                    self.store.drop(stream)
                elif not stream.ended:
                    stream.expires_at = deadline
            if not stream.request.survives_disconnect:
                # Stopped as by ``stop``: what was sent stays for a resume to read.
                self.finish(stream, "cancelled")
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
            self.fail(
                stream, "shutting_down", "the server is restarting; retry shortly"
            )

    def connected(self) -> list[str]:
        return list(self.identities)

    def socketio_connections(self) -> int:
        return sum(1 for sid in self.identities if transport_of(sid) == "socketio")

    def live_count(self, transport: str | None = None) -> int:
        """Streams still generating here (started over ``transport``, or any)."""
        streams = self.store.live_streams()
        if transport is None:
            return len(streams)
        return sum(1 for stream in streams if stream.transport == transport)

    def slow_client(self, eio_sid: str) -> None:
        """A client stopped reading with MAX_QUEUED_BYTES waiting for it: its
        connection was closed; its answers stay resumable."""
        self.metrics.slow_clients.inc()
        log.warning("connection %s closed: the client stopped reading", eio_sid)

    def _paced(self, connection: Connection, replay: Paced) -> None:
        """Run ``replay`` a part each time ``connection`` has drained, to its end."""
        while replay.step(drained(connection, self.replay_low), waited=True):
            pass

    def replay_kept(
        self,
        connection: Connection,
        request_id: str,
        pieces: list[Piece],
        first_seq: int,
        terminal: Event,
        retracted: int | None = None,
    ) -> None:
        """Send chunks kept elsewhere (a dead node's mirror), from ``first_seq``,
        then the end (``retract`` when chunks from seq ``retracted`` on were taken
        back, and ``terminal``), at the client's pace."""
        ending = end_events(request_id, terminal, retracted)
        replay = KeptReplay(self, connection, request_id, pieces, first_seq, ending)
        if replay.step("drained", waited=False):
            self.socketio.start_background_task(self._paced, connection, replay)

    def connection(self, sid: str) -> Connection:
        """Where events for ``sid`` go: straight to it when it is connected here,
        else through the message queue to the node it is connected to."""
        connection = self.connections.get(sid)
        if connection is not None:
            return connection
        if self.forwarding is not None:
            return self.forwarding.connection(sid)
        return GONE

    def described(self, token: str) -> tuple[str, int] | None:
        """The model and creation time of the stream ``token`` names, on any node."""
        stream = self.store.by_token(token)
        if stream is not None:
            return stream.request.model, stream.created
        if self.cluster is not None:
            mirror = self.cluster.store.mirrored(token)
            if mirror is not None:
                return mirror.model, mirror.created
        return None

    # -- the generation ----------------------------------------------------------------

    def _run(self, stream: Stream) -> None:
        try:
            for stage in self.stages:
                stage.starting(stream)
        except ProtocolError as exc:
            self.fail(stream, exc.code, exc.message, exc.retry_after)
            return
        except Exception:
            log.exception("starting %s failed", stream.id)
            self.fail(stream, "internal", "the server failed while answering")
            return
        attempt = 0
        while True:
            try:
                self._generate(stream)
                return
            except Halt as halt:
                self.finish(stream, halt.finish_reason)
                return
            except UpstreamError as exc:
                if stream.ended or stream.closing:
                    return  # aborted: a stop or a departed client cut the read
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
                        for stage in self.stages:
                            stage.retrying(stream)
                        continue
                self.fail(stream, exc.code, exc.message, exc.retry_after)
                return
            except Exception:
                log.exception("generation %s failed", stream.id)
                self.fail(stream, "internal", "the server failed while answering")
                return

    def _generate(self, stream: Stream) -> None:
        generation = self.provider.stream(stream.request, stream.messages, stream.abort)
        try:
            while not stream.ended:
                try:
                    batch = next(generation)
                except StopIteration as end:
                    result: Result = end.value
                    self.breaker.success()
                    for stage in self.stages:
                        held = stage.draining(stream)
                        if held:
                            self._send_batch(stream, held)
                    self.finish(stream, result.finish_reason, result)
                    return
                read = bool(batch)
                for stage in self.stages:
                    batch = stage.passing(stream, batch)
                if batch:
                    self._send_batch(stream, batch)
                # One event per window: what arrives meanwhile waits upstream, in the
                # socket, and comes in the next read. A read a stage holds back
                # (moderation) waits too: one read per window all the same.
                if read and self.window and not stream.ended:
                    since = stream.last_frame_at if batch else time.monotonic()
                    self.pacer.wait_until(since + self.window)
        finally:
            # Closing the generator closes the upstream HTTP stream.
            generation.close()

    def _send_batch(self, stream: Stream, batch: Batch) -> None:
        """Send a read's text: one chunk event per kind of text in it (each piece its
        own event when coalescing is off)."""
        if self.window and len(batch) > 1:
            batch, merged = joined(batch)
            if merged:
                self.metrics.coalesced.inc(merged)
        with stream.lock:
            if stream.ended or stream.closing:
                return
            now = time.monotonic()
            if stream.first_token_at is None:
                self.metrics.ttft.observe(now - stream.started)
            # While a resume replays, it sends what comes meanwhile too.
            connection = (
                self.connection(stream.sid)
                if stream.sid and stream.replaying is None
                else None
            )
            for piece in batch:
                seq = stream.append(piece, now)
                if connection is not None:
                    connection.send_chunk(stream.id, seq, piece)
            stream.last_frame_at = now
            self.metrics.chunks.inc(len(batch))
            self.store.touched(stream)

    def finish(
        self,
        stream: Stream,
        finish_reason: str,
        result: Result | None = None,
        retract_from: int | None = None,
    ) -> None:
        """End ``stream`` with ``done`` (unless it ended already); with
        ``retract_from``, its chunks from that seq on are taken back first."""
        payload = {
            "id": stream.id,
            "finish_reason": finish_reason,
            "usage": None,
            "timing": None,
            "model": result.model if result else stream.request.model,
        }
        if self._end(stream, "done", payload, result, retract_from):
            log.info(
                "request %s finished: %s, %d tokens",
                stream.id,
                finish_reason,
                payload["usage"]["completion_tokens"],
            )

    def retract(self, stream: Stream, from_seq: int) -> None:
        """End ``stream`` now with ``done`` (``content_filter``), its chunks from
        ``from_seq`` on taken back: from the resume buffer, here and in the shared
        store, and from its client, which gets ``retract`` before the ``done``."""
        self.finish(stream, "content_filter", retract_from=from_seq)

    def fail(
        self,
        stream: Stream,
        code: str,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        """End ``stream`` with an ``error`` event (unless it ended already)."""
        payload = ProtocolError(code, message, stream.id, retry_after).payload()
        if self._end(stream, "error", payload):
            log.warning("request %s failed: %s: %s", stream.id, code, message)

    def _end(
        self,
        stream: Stream,
        event: str,
        payload: dict[str, Any],
        result: Result | None = None,
        retract_from: int | None = None,
    ) -> bool:
        """Send the terminal event unless the stream has ended already.

        The first caller closes the stream (no chunk follows), the stages see the
        end (``Stage.ending``: the store writes the answer), then the event goes."""
        with stream.lock:
            if stream.ended or stream.closing:
                return False
            stream.closing = True
            if retract_from is not None and retract_from < len(stream.parts):
                del stream.parts[retract_from:]
                stream.retracted = retract_from
                self.store.retracted(stream, retract_from)
            if event == "done":
                now = time.monotonic()
                # So a client whose library may hand it events out of order knows
                # how many chunks to wait for.
                payload["chunks"] = len(stream.parts)
                payload["usage"] = _usage(stream, result)
                tool_calls = stream.tool_calls()
                if tool_calls:
                    payload["tool_calls"] = tool_calls
                if result is not None and result.system_fingerprint:
                    payload["system_fingerprint"] = result.system_fingerprint
                payload["timing"] = {
                    "ttft_ms": _ms(stream.first_token_at, stream.started),
                    "answer_ttft_ms": _ms(stream.first_answer_at, stream.started),
                    "total_ms": _ms(now, stream.started),
                }
        # The upstream stops now, whatever the stages take.
        stream.abort.fire()
        for stage in self.stages:
            try:
                event, payload = stage.ending(stream, event, payload)
            except Exception:
                log.exception("ending %s failed", stream.id)
        with stream.lock:
            stream.terminal = (event, payload)
            if event == "done":
                self.metrics.finished.labels(payload["finish_reason"]).inc()
            else:
                self.metrics.errors.labels(payload["code"]).inc()
            # Kept for the grace window, for a client that misses the end to resume.
            stream.expires_at = time.monotonic() + self.resume_grace
            if stream.sid is not None and stream.replaying is None:
                connection = self.connection(stream.sid)
                ending = end_events(stream.id, (event, payload), stream.retracted)
                for name, data in ending:
                    connection.send(name, data)
        self.store.ended(stream)
        self._ensure_reaper()
        return True

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
                running = not stream.ended and not stream.closing
            if running:
                # Ended as by a stop, to nobody: the stages see its end (the store
                # keeps the partial answer).
                self.finish(stream, "cancelled")
                self.metrics.abandoned.inc()
                log.info("request %s abandoned: its client did not resume", stream.id)
            with stream.lock:
                stream.abandoned = True
                self.store.drop(stream)


def _usage(stream: Stream, result: Result | None) -> dict[str, Any]:
    reasoning_text = stream.reasoning()
    if result is not None and result.usage is not None:
        usage = result.usage
        reasoning = usage.reasoning_tokens
        estimated = False
        if reasoning is None:
            # The upstream counted tokens but did not say how many were reasoning.
            reasoning = tokens.count_text(reasoning_text)
            estimated = bool(reasoning_text)
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "reasoning_tokens": min(reasoning, usage.completion_tokens),
            "cached_tokens": usage.cached_tokens or 0,
            "estimated": estimated,
        }
    # No usage from upstream (some servers never send it; a cancelled stream cannot):
    # count what was sent and received.
    prompt = tokens.count_messages(stream.messages)
    reasoning = tokens.count_text(reasoning_text)
    completion = (
        tokens.count_text(stream.text(ANSWER))
        + tokens.count_text(stream.text(REFUSAL))
        + sum(
            tokens.count_text(call["function"]["name"])
            + tokens.count_text(call["function"]["arguments"])
            for call in stream.tool_calls()
        )
        + reasoning
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "reasoning_tokens": reasoning,
        "cached_tokens": 0,
        "estimated": True,
    }


def _backoff(attempt: int) -> float:
    # 0.25 s, 0.5 s, 1 s, … with jitter, so that retries from many clients spread out.
    return min(0.25 * 2 ** (attempt - 1), 4.0) * random.uniform(0.5, 1.0)


def _ms(end: float | None, start: float) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)
