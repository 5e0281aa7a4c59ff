"""Several nodes: ``resume`` and ``stop`` of a stream that another node generates.

A client may reconnect to another node than the one generating its answer. That node
asks the owner over the owner's control channel (``cluster.py``): the owner replays
the missing chunks and streams on through the Socket.IO message queue, or stops the
stream. When the owner is dead, the mirror in Redis answers instead, and the request
ends with a retryable ``interrupted`` error, as it does for a client watching a
stream whose owner dies.

The owner reaches a Socket.IO client of another node through the Socket.IO message
queue; an HTTP client, which that queue does not know, through the control channel
of the node holding its connection, which the client's session id names. A replay
goes through that control channel too, whatever the client, at the client's pace:
before each part the owner asks the client's node to answer once what waits for the
client has drained (``drained``), and that answer also says the parts before it
have reached the client's writer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from flask_socketio import SocketIO

from .auth import may_resume
from .cluster import Cluster, Mirror
from .delivery import GONE, Connection, Drain, RemoteConnection, transport_of
from .errors import ProtocolError, interrupted, resume_denied
from .metrics import Metrics
from .providers.base import Piece
from .streams import Event, Stream

log = logging.getLogger(__name__)

# Beyond the wait asked for, how long an answer from another node may take.
REPLY_SECONDS = 3.0


class Node(Protocol):
    """What forwarding uses of this node's relay (``relay.Relay``)."""

    socketio: SocketIO
    metrics: Metrics
    connections: Mapping[str, Connection]

    def connection(self, sid: str) -> Connection: ...

    def resume(
        self,
        sid: str,
        request_id: str,
        token: str,
        after: int,
        identity: str | None = None,
        via: Connection | None = None,
    ) -> int: ...

    def finish(self, stream: Stream, finish_reason: str) -> None: ...

    def replay_kept(
        self,
        connection: Connection,
        request_id: str,
        pieces: list[Piece],
        first_seq: int,
        terminal: Event,
        retracted: int | None = None,
    ) -> None: ...


class Forwarding:
    def __init__(self, relay: Node, cluster: Cluster):
        self.relay = relay
        self.cluster = cluster
        self.store = cluster.store
        cluster.handlers["resume"] = self._resume_for_peer
        cluster.handlers["stop"] = self._stop_for_peer
        cluster.handlers["deliver"] = self._deliver_for_peer
        # It waits for a client: answered from a task of its own.
        cluster.waiting_handlers["drained"] = self._drained_for_peer
        cluster.on_owner_lost = self._owner_lost

    def connection(self, sid: str) -> Connection:
        """Where events go for a client connected to another node."""
        if transport_of(sid) == "socketio":
            return RemoteConnection(self.relay.socketio, sid)
        node = http_node(sid)
        if node is None or node == self.cluster.node:
            return GONE  # an HTTP client of this node whose response has ended
        return PeerConnection(self.cluster, node, sid)

    def resume(
        self, sid: str, request_id: str, token: str, after: int, identity: str
    ) -> int:
        """Resume a stream this node does not hold: through its owner, or, when the
        owner is gone, from the mirror, ending with a retryable error."""
        mirror = self.store.mirrored(token)
        if (
            mirror is None
            or mirror.id != request_id
            or not may_resume(identity, mirror.identity)
        ):
            raise resume_denied(request_id)
        if mirror.terminal is None and self.store.alive(mirror.node):
            result = self.cluster.ask(
                mirror.node,
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
                self.relay.metrics.resumes.inc()
                return result["value"]
            if result["code"] != "timeout":
                raise ProtocolError(result["code"], result["message"], request_id)
            # The owner did not answer: treat it as gone.
        chunks = self.store.mirrored_chunks(token, after)
        self.relay.replay_kept(
            self.relay.connection(sid),
            request_id,
            chunks,
            after + 1,
            mirror.terminal or ("error", interrupted(request_id)),
            mirror.retracted,
        )
        self.relay.metrics.resumes.inc()
        return len(chunks)

    def stop(self, sid: str, request_id: str) -> bool:
        """Ask the owner of ``sid``'s request to stop it; False when none has it."""
        token = self.store.token_for(sid, request_id)
        mirror = self.store.mirrored(token) if token else None
        if token is None or mirror is None or mirror.terminal is not None:
            return False
        if not self.store.alive(mirror.node):
            return False
        self.cluster.send(mirror.node, {"op": "stop", "token": token})
        return True

    def _resume_for_peer(self, message: dict[str, Any]) -> int:
        sid = message["sid"]
        return self.relay.resume(
            sid,
            message["id"],
            message["token"],
            message["after"],
            message["identity"],
            via=PeerConnection(self.cluster, message["reply_to"], sid),
        )

    def _stop_for_peer(self, message: dict[str, Any]) -> None:
        stream = self.store.by_token(message["token"])
        if stream is not None:
            self.relay.finish(stream, "cancelled")

    def _drained_for_peer(self, message: dict[str, Any]) -> Drain:
        connection = self.relay.connections.get(message["sid"])
        if connection is None:
            return "closed"  # the client left
        wait = getattr(connection, "drained", None)
        if wait is None:
            return "drained"
        return wait(message["low"], message["wait"])

    def _deliver_for_peer(self, message: dict[str, Any]) -> None:
        connection = self.relay.connections.get(message["sid"])
        if connection is None:
            return  # the client left meanwhile
        if "chunk" in message:
            request_id, seq, piece = message["chunk"]
            connection.send_chunk(request_id, seq, tuple(piece))
        elif "moved" in message:
            connection.moved(message["moved"])
        else:
            connection.send(message["event"], message["payload"])

    def _owner_lost(self, token: str, sid: str, mirror: Mirror) -> None:
        log.warning("node %s died with request %s in flight", mirror.node, mirror.id)
        self.relay.connection(sid).send("error", interrupted(mirror.id))


def http_node(sid: str) -> str | None:
    """The node holding an HTTP client's connection, named in its session id
    (``http:NODE:RANDOM``)."""
    parts = sid.split(":")
    return parts[1] if len(parts) == 3 else None


class PeerConnection:
    """A client connected to another node, through that node's control channel, in
    order (one Redis channel, one publisher): an HTTP client, which the Socket.IO
    message queue does not know, and any client a replay goes to."""

    __slots__ = ("_cluster", "_node", "_sid")

    def __init__(self, cluster: Cluster, node: str, sid: str):
        self._cluster = cluster
        self._node = node
        self._sid = sid

    def send_chunk(self, request_id: str, seq: int, piece: Piece) -> None:
        self._publish({"chunk": [request_id, seq, piece]})

    def send(self, event: str, payload: dict[str, Any]) -> None:
        self._publish({"event": event, "payload": payload})

    def moved(self, request_id: str) -> None:
        self._publish({"moved": request_id})

    def drained(self, low: int, timeout: float) -> Drain:
        result = self._cluster.ask(
            self._node,
            {"op": "drained", "sid": self._sid, "low": low, "wait": timeout},
            timeout + REPLY_SECONDS,
        )
        # No answer: that node is gone, and its client with it.
        return result["value"] if result["ok"] else "closed"

    def _publish(self, message: dict[str, Any]) -> None:
        self._cluster.send(self._node, {"op": "deliver", "sid": self._sid, **message})
