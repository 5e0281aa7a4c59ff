"""Hostile clients on the Socket.IO side, speaking raw WebSocket frames and raw HTTP:
a message past ``MAX_MESSAGE_BYTES`` is refused while it arrives, malformed packets
are dropped without filling the log, and a resume of a backlog far past
``MAX_QUEUED_BYTES`` delivers the exact rest to a client that reads slowly."""

import contextlib
import json
from collections.abc import Iterator

import pytest

from bench.procstat import status_kb

from .clients import (
    CONTINUATION,
    TEXT,
    Polling,
    RawSocketIO,
    metric,
    raw_request,
    worker_pid,
)
from .conftest import Relay, relay_env, upstream_text, wait_until
from .test_cluster import RedisServer, wait_mirrored_end

MESSAGE_BYTES = 16384
QUEUED_BYTES = 16384
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def hostile(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """A relay with small message and queue caps. Each test connects from loopback
    addresses of its own (127.0.2N.x)."""
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(
            upstream,
            MAX_MESSAGE_BYTES=str(MESSAGE_BYTES),
            MAX_QUEUED_BYTES=str(QUEUED_BYTES),
            # Long enough that an answer is still kept when it is resumed.
            RESUME_GRACE_SECONDS="60",
        ),
    )
    yield server
    server.quit()


def oversized(server: Relay, transport: str) -> float:
    return metric(server, "chat_oversized_messages_total", f'transport="{transport}"')


# -- a message past MAX_MESSAGE_BYTES --------------------------------------------------


def test_a_message_past_the_limit_is_closed_as_its_frames_arrive(hostile):
    worker = worker_pid(hostile)
    closed_before = oversized(hostile, "websocket")
    rss_before = status_kb(worker, "VmRSS")
    # No Socket.IO connect and no token: an Engine.IO WebSocket is enough.
    ws = RawSocketIO(hostile.url, "127.0.20.1", connect=False)
    # A text message without FIN, then continuation frames each a quarter of the
    # limit: only their running total can tell.
    ws.send_frame(TEXT, b"4", fin=False)
    piece, sent = b"x" * (MESSAGE_BYTES // 4), 0
    with contextlib.suppress(OSError):  # the server closed under the sends
        while sent < 64 * MIB:
            ws.send_frame(CONTINUATION, piece, fin=False)
            sent += len(piece)
    assert ws.closed_with() == 1009  # Message Too Big
    assert sent < 64 * MIB
    wait_until(
        lambda: oversized(hostile, "websocket") == closed_before + 1,
        what="the close to be counted",
    )
    # A frame whose header alone announces too much is refused before its payload.
    announcer = RawSocketIO(hostile.url, "127.0.20.2", connect=False)
    announcer.sock.sendall(b"\x81\xff" + (1 << 30).to_bytes(8, "big") + b"mask")
    assert announcer.closed_with() == 1009
    wait_until(lambda: oversized(hostile, "websocket") == closed_before + 2)
    # A bound, not the proof (the close is): what was sent is 64 MiB, or as much
    # of it as the kernel took before the close.
    growth_kb = status_kb(worker, "VmRSS") - rss_before
    assert growth_kb < 16 * 1024


def test_a_polling_message_past_the_limit_is_refused_before_it_is_read(hostile):
    address = "127.0.21.1"
    closed_before = oversized(hostile, "polling")
    announced = Polling(hostile.url, address)
    path = f"/socket.io/?EIO=4&transport=polling&sid={announced.sid}"
    # The body is announced and never sent: an answer cannot have waited for it.
    status, body = raw_request(
        hostile.url,
        address,
        f"POST {path} HTTP/1.1\r\nContent-Length: {100 * MESSAGE_BYTES}",
    )
    assert status == 413
    refusal = json.loads(body)
    assert refusal["code"] == "message_too_big"
    assert str(MESSAGE_BYTES) in refusal["message"]
    assert refusal["retryable"] is False
    # The session ended with it.
    assert announced._request("GET", path)[0].status == 400
    # A chunked body is counted as it is read: refused at the first byte past.
    chunked = Polling(hostile.url, address)
    path = f"/socket.io/?EIO=4&transport=polling&sid={chunked.sid}"
    piece = b"4" * 4096
    status, body = raw_request(
        hostile.url,
        address,
        f"POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked",
        [b"1000\r\n" + piece + b"\r\n"] * 64 + [b"0\r\n\r\n"],
    )
    assert status == 413
    assert json.loads(body)["code"] == "message_too_big"
    assert chunked._request("GET", path)[0].status == 400
    assert oversized(hostile, "polling") == closed_before + 2


# -- malformed packets -----------------------------------------------------------------


def test_malformed_packets_are_dropped_with_one_short_line_a_minute(hostile):
    mode = hostile.async_mode
    log_before = len(hostile.process.log_text())
    dropped_before = metric(hostile, "chat_malformed_packets_total")
    ws = RawSocketIO(hostile.url, "127.0.22.1")
    ws_sid = json.loads(ws.packets[0][1:])["sid"]
    # Two bytes each that are no Socket.IO packet, then three that are no Engine.IO
    # packet either (each closed the connection with a traceback).
    for _ in range(1000):
        ws.send("4x")
    for text in ("", "x", "b!"):
        ws.send(text)
    polling = Polling(hostile.url, "127.0.22.2")
    path = f"/socket.io/?EIO=4&transport=polling&sid={polling.sid}"
    for _ in range(50):
        assert polling._request("POST", path, b"x")[0].status == 200
    wait_until(
        lambda: (
            metric(hostile, "chat_malformed_packets_total") == dropped_before + 1053
        ),
        what="every malformed packet to be dropped",
    )
    # The connection goes on: its next chat gets the exact answer.
    prompt = f"after the noise {mode} [[tokens:20]]"
    ws.send("421" + json.dumps(["chat", {"id": "after", "message": prompt}]))
    while not any(p.startswith('42["done"') for p in ws.packets):
        ws.next_packet()
    deltas = [c["delta"] for c in ws.events("chunk") if c["id"] == "after"]
    assert "".join(deltas) == upstream_text(prompt, 20)
    polling.close()

    grown = hostile.process.log_text()[log_before:]
    assert "Traceback" not in grown
    for sid in (ws_sid, polling.sid or path.rsplit("=", 1)[1]):
        lines = [line for line in grown.splitlines() if f"connection {sid}:" in line]
        assert len(lines) == 1, lines
        assert "malformed packet dropped" in lines[0]
        assert len(lines[0]) < 300
    # 1,053 packets, two lines and the chat's own.
    assert len(grown) < 2000


# -- resume of a backlog past MAX_QUEUED_BYTES -----------------------------------------

LONG_TOKENS = 4000
# Chunks kept when the resume comes: each is about 50 bytes as written, so about
# six times MAX_QUEUED_BYTES (three times the two nodes' cap).
KEPT_CHUNKS = 2000
READ_RATE = 64 * 1024


def start_and_leave(server: Relay, address: str, request_id: str, prompt: str) -> str:
    """Start ``prompt`` from a raw client that leaves at once, reading nothing;
    return the resume token."""
    leaver = RawSocketIO(server.url, address)
    leaver.send("420" + json.dumps(["chat", {"id": request_id, "message": prompt}]))
    while not any(p.startswith("430") for p in leaver.packets):
        leaver.next_packet()
    ack = next(json.loads(p[3:])[0] for p in leaver.packets if p.startswith("430"))
    assert ack["ok"] is True
    leaver.sock.close()
    return ack["resume_token"]


def wait_kept(server: Relay, chunks_before: float) -> None:
    """Wait until ``KEPT_CHUNKS`` more chunks are kept (the answer goes on)."""
    wait_until(
        lambda: metric(server, "chat_chunks_sent_total") >= chunks_before + KEPT_CHUNKS,
        timeout=30,
        what=f"{KEPT_CHUNKS} chunks kept",
    )


def resume_slowly(
    server: Relay, address: str, request_id: str, token: str
) -> RawSocketIO:
    """Resume from nothing on a raw client on a slow link (a small receive buffer,
    64 KiB a second), which reads steadily to the end of the answer."""
    reader = RawSocketIO(
        server.url, address, read_rate=READ_RATE, rcvbuf=4096, maxseg=536
    )
    resume = {"id": request_id, "token": token, "after": -1}
    reader.send("421" + json.dumps(["resume", resume]))
    while not any(p.startswith(('42["done"', '42["error"')) for p in reader.packets):
        reader.next_packet()
    return reader


def assert_whole_answer(
    reader: RawSocketIO, request_id: str, prompt: str, replayed: int
) -> None:
    """The resume was acknowledged with at least ``replayed`` chunks to replay, and
    the reader got the whole answer: in seq order, once each, the live chunks after
    the replayed ones, then the end."""
    ack = next(json.loads(p[3:])[0] for p in reader.packets if p.startswith("431"))
    assert ack["ok"] is True
    assert ack["replayed"] >= replayed
    chunks = [c for c in reader.events("chunk") if c["id"] == request_id]
    assert [c["seq"] for c in chunks] == list(range(LONG_TOKENS))
    assert "".join(c["delta"] for c in chunks) == upstream_text(prompt, LONG_TOKENS)
    ends = [p for p in reader.packets if p.startswith(('42["done"', '42["error"'))]
    assert len(ends) == 1
    assert json.loads(ends[0][2:])[1]["finish_reason"] == "stop"
    last_chunk = max(
        n for n, p in enumerate(reader.packets) if p.startswith('42["chunk"')
    )
    assert reader.packets.index(ends[0]) > last_chunk


def test_a_resume_past_the_queue_cap_gets_the_exact_rest_at_the_readers_pace(
    hostile,
):
    mode = hostile.async_mode
    prompt = f"a long answer to resume {mode} [[tokens:{LONG_TOKENS}]] [[tps:500]]"
    slow_before = metric(hostile, "chat_slow_clients_closed_total")
    chunks_before = metric(hostile, "chat_chunks_sent_total")
    token = start_and_leave(hostile, "127.0.23.1", "long", prompt)
    wait_kept(hostile, chunks_before)
    reader = resume_slowly(hostile, "127.0.23.2", "long", token)
    assert_whole_answer(reader, "long", prompt, KEPT_CHUNKS - 1)
    assert metric(hostile, "chat_slow_clients_closed_total") == slow_before
    reader.sock.close()


@pytest.fixture(scope="module")
def two_nodes(
    async_mode, tmp_session, upstream
) -> Iterator[tuple[Relay, Relay, RedisServer]]:
    """Two relay nodes sharing a Redis server, with a small queue cap."""
    redis_server = RedisServer(tmp_session)
    started = [
        Relay(
            tmp_session,
            async_mode,
            relay_env(
                upstream,
                SOCKETIO_MESSAGE_QUEUE=redis_server.url,
                NODE_ID=name,
                # Twice the single node's cap, still a third of the backlog: the
                # other node's queue also takes the live chunks that come through
                # Redis, which may arrive in bursts.
                MAX_QUEUED_BYTES=str(2 * QUEUED_BYTES),
                RESUME_GRACE_SECONDS="60",
            ),
        )
        for name in ("owner", "other")
    ]
    yield started[0], started[1], redis_server
    for server in started:
        server.quit()
    redis_server.stop()


def test_a_resume_on_another_node_past_the_queue_cap_gets_the_exact_rest(two_nodes):
    owner, other, redis_server = two_nodes
    mode = owner.async_mode
    slow_before = metric(other, "chat_slow_clients_closed_total")
    # Through the node that generates it, while it goes on.
    live = f"a long answer resumed elsewhere {mode} [[tokens:{LONG_TOKENS}]] "
    live += "[[tps:500]]"
    chunks_before = metric(owner, "chat_chunks_sent_total")
    token = start_and_leave(owner, "127.0.24.1", "live", live)
    wait_kept(owner, chunks_before)
    reader = resume_slowly(other, "127.0.24.2", "live", token)
    assert_whole_answer(reader, "live", live, KEPT_CHUNKS - 1)
    reader.sock.close()
    # From the mirror in Redis, once it has ended there.
    ended = f"an ended answer resumed elsewhere {mode} [[tokens:{LONG_TOKENS}]] "
    ended += "[[tps:0]]"
    token = start_and_leave(owner, "127.0.24.3", "ended", ended)
    wait_mirrored_end(redis_server, token)
    reader = resume_slowly(other, "127.0.24.4", "ended", token)
    assert_whole_answer(reader, "ended", ended, LONG_TOKENS)
    reader.sock.close()
    assert metric(other, "chat_slow_clients_closed_total") == slow_before
