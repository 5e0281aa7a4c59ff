"""Responses by id: what ``GET /v1/responses/{id}`` needs to find one on any node.

A client holds only a response's id, where the core's resume wants the stream's
resume token. Each response's token, and the request fields its object repeats, are
kept by id: in this process for its own streams, and, with several nodes, in Redis
too, so that a retrieve or a resume on another node finds the stream (through its
mirror) by its token. Redis names the entry by a digest of the id: a look at Redis
gives no response id, and a token alone resumes nothing over this transport.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

import redis

from ..cluster import PREFIX
from ..relay import Relay

log = logging.getLogger(__name__)

# How long Redis keeps an entry: longer than a generation runs and its resume grace
# (a stream's mirror itself goes once it has ended and its grace is over).
REDIS_TTL_SECONDS = 3600
# How often this process forgets the entries of streams its store has dropped.
_PRUNE_SECONDS = 5.0


class ResponseIds:
    """Each response's resume token and repeated request fields, by its id."""

    def __init__(self, relay: Relay):
        self._relay = relay
        self._local: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._pruned_at = time.monotonic()

    def add(self, response_id: str, token: str, echo: dict[str, Any]) -> None:
        with self._lock:
            self._local[response_id] = (token, echo)
        cluster = self._relay.cluster
        if cluster is not None:
            try:
                cluster.store.redis.set(
                    _key(response_id),
                    json.dumps({"token": token, "echo": echo}),
                    ex=REDIS_TTL_SECONDS,
                )
            except redis.RedisError as exc:
                log.warning(
                    "indexing response %s in Redis failed: %s", response_id, exc
                )
        self._prune()

    def get(self, response_id: str) -> tuple[str, dict[str, Any]] | None:
        """The token and repeated fields of a response, or None when none is
        known by that id (or it is no longer kept)."""
        found = self._local.get(response_id)
        if found is not None:
            return found
        cluster = self._relay.cluster
        if cluster is None:
            return None
        try:
            raw = cluster.store.redis.get(_key(response_id))
        except redis.RedisError as exc:
            log.warning("reading response %s from Redis failed: %s", response_id, exc)
            return None
        if raw is None:
            return None
        entry = json.loads(raw)
        return entry["token"], entry["echo"]

    def _prune(self) -> None:
        """Forget the entries of streams this process no longer keeps."""
        now = time.monotonic()
        if now - self._pruned_at < _PRUNE_SECONDS:
            return
        self._pruned_at = now
        store = self._relay.store
        with self._lock:
            gone = [
                response_id
                for response_id, (token, _) in self._local.items()
                if store.by_token(token) is None
            ]
            for response_id in gone:
                del self._local[response_id]


def _key(response_id: str) -> str:
    return PREFIX + "response:" + hashlib.sha256(response_id.encode()).hexdigest()[:32]
