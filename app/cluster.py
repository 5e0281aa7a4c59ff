"""Several nodes sharing stream state in Redis, so that resume and stop work from any
node, and a node's death is reported instead of silent.

Each node keeps its own generations in memory (``MemoryStreamStore``) and mirrors them
to Redis in batches: the request's owner node, connection, identity, every chunk and
the terminal event, with an expiry. Chunks to a client connected to the generating node
never touch Redis on their way out; only a client that resumed on another node gets them
through the Socket.IO message queue. A node that receives ``resume`` or ``stop`` for a
stream it does not hold forwards it to the owner over the owner's control channel, or,
when the owner is dead, answers from the mirror and ends the request with a retryable
``interrupted`` error. Chunks taken back by moderation (``Relay.retract``) are cut
from the mirror before the end is written, at the latest in the flush that writes it:
a node that sees the end replays none of them. Everything on the wire and in Redis is
JSON.
"""

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from .errors import ProtocolError
from .providers.base import ANSWER, REASONING, REFUSAL, Piece
from .streams import Event, MemoryStreamStore, Stream

log = logging.getLogger(__name__)

PREFIX = "chatstream:"
HEARTBEAT_SECONDS = 1.0
# A node whose heartbeat is this old is dead.
NODE_TTL_SECONDS = 3
FLUSH_SECONDS = 0.05
# How long a live stream's mirror outlives its last write (refreshed while it runs).
LIVE_TTL_SECONDS = 600
REPLY_TIMEOUT_SECONDS = 3.0


# Each mirrored chunk is its text behind one letter naming its kind.
# A mirrored chunk is one string: a letter for its kind, then its text; a piece
# that is more than text (a tool call's fragment, text with log probabilities) is
# "j" and the piece as JSON.
_KIND_LETTER = {ANSWER: "a", REASONING: "r", REFUSAL: "f"}
_LETTER_KIND = {letter: kind for kind, letter in _KIND_LETTER.items()}


def _mirrored(piece: Piece) -> str:
    if len(piece) == 2 and piece[0] in _KIND_LETTER:
        return _KIND_LETTER[piece[0]] + piece[1]
    return "j" + json.dumps(piece, separators=(",", ":"))


def _piece(entry: str) -> Piece:
    if entry[0] == "j":
        return tuple(json.loads(entry[1:]))
    return (_LETTER_KIND[entry[0]], entry[1:])


@dataclass(frozen=True)
class Mirror:
    """What Redis holds of a stream: its owner node, its connection and user, and its
    terminal event once it has ended."""

    id: str
    node: str
    sid: str
    identity: str
    terminal: Event | None
    model: str = ""
    created: int = 0
    # The seq from which its chunks were taken back (moderation), when they were.
    retracted: int | None = None

    @classmethod
    def parse(cls, meta: dict[str, str]) -> "Mirror":
        terminal = json.loads(meta["terminal"]) if meta.get("terminal") else None
        return cls(
            id=meta["id"],
            node=meta["node"],
            sid=meta.get("sid", ""),
            identity=meta["identity"],
            terminal=(terminal[0], terminal[1]) if terminal else None,
            model=meta.get("model", ""),
            created=int(meta.get("created") or 0),
            retracted=int(meta["retracted"]) if meta.get("retracted") else None,
        )


def _key(token: str) -> str:
    # Keys name a digest, so that a look at Redis does not hand out resume tokens.
    return PREFIX + "s:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def _node_key(node: str) -> str:
    return PREFIX + "node:" + node


def _channel(node: str) -> str:
    return PREFIX + "ctl:" + node


def _sid_key(sid: str) -> str:
    return PREFIX + "sid:" + sid


class ClusterStreamStore(MemoryStreamStore):
    """The in-memory store, mirrored to Redis by a flusher for the other nodes."""

    def __init__(self, url: str, node: str, grace: float):
        super().__init__()
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.node = node
        self.grace = grace
        # Streams changed since the last flush, and how many chunks Redis has of each.
        self._dirty: dict[str, Stream] = {}
        self._mirrored: dict[str, int] = {}
        # Streams whose chunks from a seq on were taken back: Redis's copy is cut
        # there at the next flush, before anything else of theirs is written.
        self._cut: dict[str, int] = {}
        self._forget: list[tuple[str, str | None, str]] = []
        self._dirty_lock = threading.Lock()

    # -- the store interface, mirrored -------------------------------------------------

    def add(self, stream: Stream, limit_per_sid: int, limit_per_identity: int) -> None:
        super().add(stream, limit_per_sid, limit_per_identity)
        # Written now, not at the next flush: a client whose connection drops at
        # once may resume on another node, which must find the stream's owner.
        try:
            key = _key(stream.token)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, mapping=self._meta(stream))
            pipe.expire(key, LIVE_TTL_SECONDS)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("registering a stream in Redis failed: %s", exc)
        self.touched(stream)

    def _meta(self, stream: Stream) -> dict[str, str]:
        return {
            "id": stream.id,
            "node": self.node,
            "sid": stream.sid or "",
            "identity": stream.identity,
            "terminal": json.dumps(stream.terminal) if stream.terminal else "",
            "model": stream.request.model,
            "created": str(stream.created),
            "retracted": "" if stream.retracted is None else str(stream.retracted),
        }

    def attach(self, stream: Stream, sid: str) -> None:
        old_sid = stream.sid
        super().attach(stream, sid)
        if old_sid is not None and old_sid != sid:
            with self._dirty_lock:
                self._forget.append(("sid", old_sid, stream.id))
        if not stream.ended:
            # Written now, not at the next flush: the client may send ``stop`` to its
            # new node as soon as the resume is acknowledged.
            try:
                self.redis.hset(_sid_key(sid), stream.id, stream.token)
            except redis.RedisError as exc:
                log.warning("indexing a resumed stream failed: %s", exc)
        self.touched(stream)

    def ended(self, stream: Stream) -> None:
        super().ended(stream)
        self.touched(stream)

    def drop(self, stream: Stream) -> None:
        super().drop(stream)
        with self._dirty_lock:
            self._dirty.pop(stream.token, None)
            self._mirrored.pop(stream.token, None)
            self._cut.pop(stream.token, None)

    def retracted(self, stream: Stream, from_seq: int) -> None:
        with self._dirty_lock:
            cut = self._cut.get(stream.token)
            self._cut[stream.token] = from_seq if cut is None else min(cut, from_seq)
            self._dirty[stream.token] = stream

    def touched(self, stream: Stream) -> None:
        with self._dirty_lock:
            self._dirty[stream.token] = stream

    # -- mirroring ---------------------------------------------------------------------

    def flush(self) -> None:
        """Write every changed stream's new chunks and state to Redis."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, {}
            forget, self._forget = self._forget, []
            cuts, self._cut = self._cut, {}
        if not dirty and not forget:
            return
        pipe = self.redis.pipeline(transaction=False)
        for kind, sid, request_id in forget:
            if kind == "sid" and sid is not None:
                pipe.hdel(_sid_key(sid), request_id)
        for token, stream in dirty.items():
            done = self._mirrored.get(token)
            cut = cuts.get(token)
            if cut is not None and done is not None and cut < done:
                # Taken back: what Redis holds from that seq on goes first, so that
                # a node that sees the end also sees the chunks without them.
                if cut == 0:
                    pipe.delete(_key(token) + ":c")
                else:
                    pipe.ltrim(_key(token) + ":c", 0, cut - 1)
                done = cut
            with stream.lock:
                parts = stream.parts[done or 0 :]
                count = len(stream.parts)
                meta = self._meta(stream)
                ended = stream.ended
            key = _key(token)
            ttl = int(self.grace) + 1 if ended else LIVE_TTL_SECONDS
            if done is None:
                # A first write, or one after a failed flush that may have half
                # happened (or a Redis that kept its data): the list is written
                # whole, never appended to twice.
                pipe.delete(key + ":c")
            if parts:
                pipe.rpush(key + ":c", *(_mirrored(piece) for piece in parts))
            pipe.hset(key, mapping=meta)
            pipe.expire(key, ttl)
            pipe.expire(key + ":c", ttl)
            if stream.sid:
                if ended:
                    pipe.hdel(_sid_key(stream.sid), stream.id)
                else:
                    pipe.hset(_sid_key(stream.sid), stream.id, token)
                    pipe.expire(_sid_key(stream.sid), LIVE_TTL_SECONDS)
            self._mirrored[token] = count
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # Redis is away (restarting?): keep the changes for the next flush.
            log.warning("mirroring to Redis failed: %s", exc)
            with self._dirty_lock:
                for token, stream in dirty.items():
                    self._dirty.setdefault(token, stream)
                    # Written whole next time: a cut is in that too.
                    self._mirrored.pop(token, None)
                self._forget.extend(forget)

    # -- what other nodes read ---------------------------------------------------------

    def mirrored(self, token: str) -> Mirror | None:
        meta = self.redis.hgetall(_key(token))
        return Mirror.parse(meta) if meta else None

    def mirrored_chunks(self, token: str, after: int) -> list[Piece]:
        """The mirrored chunks after seq ``after``, as pieces."""
        entries = self.redis.lrange(_key(token) + ":c", after + 1, -1)
        return [_piece(entry) for entry in entries]

    def token_for(self, sid: str, request_id: str) -> str | None:
        return self.redis.hget(_sid_key(sid), request_id)

    def alive(self, node: str) -> bool:
        return node == self.node or bool(self.redis.exists(_node_key(node)))


class Cluster:
    """This node's part in the cluster: heartbeat, flusher, control channel."""

    def __init__(self, store: ClusterStreamStore, start_task: Callable[..., Any]):
        self.store = store
        self.node = store.node
        self.start_task = start_task
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        # Handlers that wait, answered from a task of their own so that the control
        # channel goes on meanwhile.
        self.waiting_handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self._replies: dict[str, tuple[threading.Event, list[Any]]] = {}
        # Streams owned elsewhere whose client is connected here: token -> sid.
        self.watched: dict[str, str] = {}
        self.on_owner_lost: Callable[[str, str, Mirror], None] | None = None

    @staticmethod
    def new_node_id() -> str:
        return uuid.uuid4().hex[:12]

    def start(self) -> None:
        self.start_task(self._heartbeat_forever)
        self.start_task(self._flush_forever)
        self.start_task(self._listen_forever)

    def _heartbeat_forever(self) -> None:
        while True:
            try:
                self.store.redis.set(
                    _node_key(self.node), str(time.time()), ex=NODE_TTL_SECONDS
                )
                self._check_watched()
            except redis.RedisError as exc:
                log.warning("heartbeat to Redis failed: %s", exc)
            except Exception:
                log.exception("cluster heartbeat failed")
            time.sleep(HEARTBEAT_SECONDS)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.store.flush()
            except Exception:
                log.exception("flushing the stream mirror failed")

    def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(_channel(self.node))
                delay = 0.5
                for message in pubsub.listen():
                    self._handle(json.loads(message["data"]))
            except redis.RedisError as exc:
                log.warning("control channel lost (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10)
            except Exception:
                log.exception("control channel failed")
                time.sleep(delay)

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "reply":
            waiting = self._replies.get(message.get("nonce", ""))
            if waiting is not None:
                waiting[1].append(message.get("result"))
                waiting[0].set()
            return
        slow = self.waiting_handlers.get(op or "")
        if slow is not None:
            self.start_task(self._answer, slow, message)
            return
        handler = self.handlers.get(op or "")
        if handler is not None:
            self._answer(handler, message)

    def _answer(
        self, handler: Callable[[dict[str, Any]], Any], message: dict[str, Any]
    ) -> None:
        try:
            result = {"ok": True, "value": handler(message)}
        except ProtocolError as exc:
            result = {"ok": False, "code": exc.code, "message": exc.message}
        if message.get("reply_to"):
            self.send(
                message["reply_to"],
                {"op": "reply", "nonce": message["nonce"], "result": result},
            )

    def send(self, node: str, message: dict[str, Any]) -> None:
        self.store.redis.publish(_channel(node), json.dumps(message))

    def ask(
        self,
        node: str,
        message: dict[str, Any],
        timeout: float = REPLY_TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        """Send ``message`` to ``node`` and wait for its handler's result."""
        nonce = uuid.uuid4().hex
        event = threading.Event()
        self._replies[nonce] = (event, [])
        try:
            self.send(node, {**message, "nonce": nonce, "reply_to": self.node})
            if not event.wait(timeout):
                return {"ok": False, "code": "timeout"}
            return self._replies[nonce][1][0]
        finally:
            self._replies.pop(nonce, None)

    def watch(self, token: str, sid: str) -> None:
        self.watched[token] = sid

    def unwatch_sid(self, sid: str) -> None:
        for token, watched_sid in list(self.watched.items()):
            if watched_sid == sid:
                del self.watched[token]

    def _check_watched(self) -> None:
        for token, sid in list(self.watched.items()):
            mirror = self.store.mirrored(token)
            if mirror is None or mirror.terminal is not None:
                self.watched.pop(token, None)
            elif not self.store.alive(mirror.node):
                self.watched.pop(token, None)
                if self.on_owner_lost is not None:
                    self.on_owner_lost(token, sid, mirror)
