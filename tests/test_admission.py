"""Admission under a flood and under a slow reader, against real relay processes:
refused handshakes and connects carry their codes, one address cannot lock others
out, and a client that stops reading is closed without growing the worker."""

import json
import sys
from collections.abc import Iterator

import pytest
import socketio

from app import create_app
from app import socketio as server_socketio
from bench.procstat import status_kb
from client import ChatClient, ChatConnectionError

from .clients import (
    Polling,
    RawSocketIO,
    bound_socket,
    healthz,
    metric,
    refusals,
    sessions,
    sio_from,
    wait_sessions,
    worker_pid,
)
from .conftest import (
    Relay,
    ServerProcess,
    free_port,
    relay_env,
    upstream_text,
    wait_until,
)

PER_ADDRESS = 3
PER_IDENTITY = 2
MAX_CONNECTIONS = 8
HANDSHAKES = 20
QUEUED_BYTES = 16384


@pytest.fixture(scope="module")
def guarded(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """A relay with small connection limits. Each test connects from loopback
    addresses of its own (127.0.N.x), so that one test's allowance of handshakes is
    not another's."""
    env = relay_env(
        upstream,
        MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        MAX_CONNECTIONS_PER_ADDRESS=str(PER_ADDRESS),
        MAX_CONNECTIONS_PER_IDENTITY=str(PER_IDENTITY),
        HANDSHAKES_PER_MINUTE=str(HANDSHAKES),
        MAX_QUEUED_BYTES=str(QUEUED_BYTES),
        # Long enough that the slow reader's answer is still kept when it resumes.
        RESUME_GRACE_SECONDS="60",
    )
    server = Relay(tmp_session, async_mode, env)
    yield server
    server.quit()


# -- limits per address and per identity -----------------------------------------------


def test_one_address_past_its_cap_is_refused_and_another_streams(guarded):
    flood, other = "127.0.1.1", "127.0.1.2"
    # The per-identity cap (anonymous: the address) is met at the Socket.IO connect.
    held = [sio_from(guarded.url, flood) for _ in range(PER_IDENTITY)]
    refused = socketio.Client(
        reconnection=False,
        websocket_extra_options={"socket": bound_socket(guarded.url, flood)},
    )
    errors = []
    refused.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(guarded.url, transports=["websocket"], wait_timeout=5)
    assert errors[0]["data"] == {"code": "too_many_connections", "retryable": False}
    assert "already holds 2 connections" in errors[0]["message"]
    wait_sessions(guarded, PER_IDENTITY)
    # Engine.IO sessions that never connect to Socket.IO count against the address
    # too: past its cap the handshake itself is refused, as an HTTP error.
    polling = Polling(guarded.url, flood)
    assert polling.status == 200
    past = Polling(guarded.url, flood)
    assert past.status == 429
    assert past.body["code"] == "too_many_connections"
    assert past.body["retryable"] is False
    assert int(past.retry_after) > 0
    assert refusals(guarded, "too_many_connections") >= 2
    try:
        # Another address is not locked out: it connects and streams its answer.
        prompt = f"from another address {guarded.async_mode} [[tokens:40]]"
        bystander = sio_from(guarded.url, other)
        assert bystander.chat("b", prompt)["ok"]
        assert bystander.wait_end("b")[0] == "done"
        assert bystander.text("b") == upstream_text(prompt, 40)
        bystander.close()
        # A session that ends frees its place.
        polling.close()
        wait_sessions(guarded, PER_IDENTITY)
        again = Polling(guarded.url, flood)
        assert again.status == 200
        again.close()
    finally:
        for client in held:
            client.close()
    wait_sessions(guarded, 0)


def test_a_session_that_never_connects_to_socketio_is_counted_until_it_ends(guarded):
    address = "127.0.2.1"
    opened = [Polling(guarded.url, address) for _ in range(PER_ADDRESS)]
    assert [p.status for p in opened] == [200] * PER_ADDRESS
    assert sessions(guarded) == PER_ADDRESS
    # A WebSocket session that closes before its Socket.IO connect frees its place.
    for polling in opened[:2]:
        polling.close()
    ws = RawSocketIO(guarded.url, address, connect=False)
    wait_sessions(guarded, 2)
    ws.sock.close()
    wait_sessions(guarded, 1)
    opened[2].close()
    wait_sessions(guarded, 0)


# -- the global cap --------------------------------------------------------------------


def test_full_server_refuses_at_once_with_server_full_and_still_answers_health(
    guarded,
):
    addresses = [f"127.0.3.{n}" for n in range(1, 4)]
    opened = [
        Polling(guarded.url, addresses[n % len(addresses)])
        for n in range(MAX_CONNECTIONS)
    ]
    try:
        assert [p.status for p in opened] == [200] * MAX_CONNECTIONS
        # The refusal is the handshake's own response, from any address.
        full = Polling(guarded.url, "127.0.3.9")
        assert full.status == 503
        assert full.body["code"] == "server_full"
        assert full.body["retryable"] is True
        assert int(full.retry_after) > 0
        assert healthz(guarded.url) == 200
        assert refusals(guarded, "server_full") >= 1
        # The Python client says so with the code: its polling handshake gets the
        # body.
        with pytest.raises(ChatConnectionError) as caught:
            ChatClient(guarded.url, timeout=5).connect()
        assert caught.value.code == "server_full"
        assert caught.value.retryable is True
    finally:
        for polling in opened:
            polling.close()
    wait_sessions(guarded, 0)
    room = Polling(guarded.url, "127.0.3.9")
    assert room.status == 200
    room.close()
    wait_sessions(guarded, 0)


def test_python_client_raises_too_many_connections(guarded):
    # The Python client's polling transport cannot be bound: it is 127.0.0.1's.
    held = [ChatClient(guarded.url, timeout=5) for _ in range(PER_IDENTITY)]
    for chat in held:
        chat.connect()
    try:
        with pytest.raises(ChatConnectionError) as caught:
            ChatClient(guarded.url, timeout=5).connect()
        assert caught.value.code == "too_many_connections"
        assert caught.value.retryable is False
    finally:
        for chat in held:
            chat.close()
    wait_sessions(guarded, 0)


# -- the handshake rate ----------------------------------------------------------------


def test_handshakes_past_the_rate_are_refused_per_address(guarded):
    storm, calm = "127.0.4.1", "127.0.4.2"
    for _ in range(HANDSHAKES):
        polling = Polling(guarded.url, storm)
        assert polling.status == 200
        polling.close()
    refused = Polling(guarded.url, storm)
    assert refused.status == 429
    assert refused.body["code"] == "handshake_rate_limited"
    assert refused.body["retryable"] is True
    assert 0 < int(refused.retry_after) <= 60
    assert refusals(guarded, "handshake_rate_limited") >= 1
    calm_one = Polling(guarded.url, calm)
    assert calm_one.status == 200
    calm_one.close()
    wait_sessions(guarded, 0)


def test_connections_per_identity_count_the_token_not_the_address():
    app = create_app(
        {
            "ASYNC_MODE": "threading",
            "LLM_PROVIDER": "demo",
            "AUTH_TOKENS": ["alpha", "beta"],
            "MAX_CONNECTIONS_PER_IDENTITY": 2,
            "TESTING": True,
        }
    )
    alphas = [server_socketio.test_client(app, auth={"token": "alpha"}) for _ in "ab"]
    assert all(client.is_connected() for client in alphas)
    third = server_socketio.test_client(app, auth={"token": "alpha"})
    assert not third.is_connected()
    beta = server_socketio.test_client(app, auth={"token": "beta"})
    assert beta.is_connected()
    alphas[0].disconnect()
    assert server_socketio.test_client(app, auth={"token": "alpha"}).is_connected()


# -- the design card's plain command ---------------------------------------------------

PLAIN_WORKERS = {
    "eventlet": ["-k", "eventlet"],
    "gevent": ["-k", "gevent"],
    "threading": ["-k", "gthread", "--threads", "10"],
}


def test_plain_gunicorn_command_is_capped_below_its_worker(async_mode, tmp_session):
    """``gunicorn -k eventlet -w 1 wsgi:app`` with no config file: the cap comes
    from the worker's own settings (10 connections here, 9 taken)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        [sys.executable, "-m", "gunicorn", "-w", "1", *PLAIN_WORKERS[async_mode]]
        + ["--worker-connections", "10", "-b", f"127.0.0.1:{port}", "wsgi:app"],
        {"ASYNC_MODE": async_mode, "LLM_PROVIDER": "demo", "PYTHONUNBUFFERED": "1"},
        tmp_session / f"plain-{async_mode}-{port}.log",
    )
    opened: list[Polling] = []
    try:
        server.wait_http(url + "/healthz")
        opened = [Polling(url, f"127.0.5.{n}") for n in range(1, 10)]
        assert [p.status for p in opened] == [200] * 9
        full = Polling(url, "127.0.5.10")
        assert full.status == 503
        assert full.body["code"] == "server_full"
        assert healthz(url) == 200
        assert "at most 9 open connections, 90% of 10" in server.log_text()
    finally:
        for polling in opened:
            polling.close()
        server.stop()


# -- a client that stops reading -------------------------------------------------------


def test_client_that_stops_reading_is_closed_and_resumes_the_exact_rest(guarded):
    mode = guarded.async_mode
    long_prompt = f"a long answer for a slow reader {mode} [[tokens:4000]] [[tps:0]]"
    side_prompt = f"a bystander meanwhile {mode} [[tokens:200]] [[tps:400]]"
    closed_before = metric(guarded, "chat_slow_clients_closed_total")
    worker = worker_pid(guarded)
    bystander = sio_from(guarded.url, "127.0.6.2")
    slow = RawSocketIO(guarded.url, "127.0.6.1", rcvbuf=4096, maxseg=536)
    rss_before = status_kb(worker, "VmRSS")
    try:
        assert bystander.chat("side", side_prompt)["ok"]
        slow.send("420" + json.dumps(["chat", {"id": "slow", "message": long_prompt}]))
        # Read until the ack (the resume token), then never again.
        while not any(p.startswith("430") for p in slow.packets):
            slow.next_packet()
        ack = next(json.loads(p[3:])[0] for p in slow.packets if p.startswith("430"))
        assert ack["ok"] is True

        wait_until(
            lambda: metric(guarded, "chat_slow_clients_closed_total") > closed_before,
            what="the slow reader's connection to be closed",
        )
        guarded.wait_log("closed: the client stopped reading")
        # The answer goes on without it, to its end, kept for a resume.
        guarded.wait_log("request slow finished")
        growth_kb = status_kb(worker, "VmRSS") - rss_before
        # The worker grew by the answer it keeps for the resume (4000 short chunks,
        # 1-2 MiB measured) and what was queued up to the cap, then let go. (The
        # bound alone cannot tell the cap from none at this size: the close above
        # is what shows the cap.)
        assert growth_kb * 1024 < 8 * 1024 * 1024 + 16 * QUEUED_BYTES

        assert bystander.wait_end("side")[0] == "done"
        assert bystander.text("side") == upstream_text(side_prompt, 200)

        # What reached the slow reader is a prefix of the answer; a resume from a
        # new connection, after its last seq, gets exactly the rest.
        slow.drain()
        held = [c for c in slow.events("chunk") if c["id"] == "slow"]
        assert [c["seq"] for c in held] == list(range(len(held)))
        resumer = sio_from(guarded.url, "127.0.6.3")
        after = held[-1]["seq"] if held else -1
        resume = {"id": "slow", "token": ack["resume_token"], "after": after}
        assert resumer.call("resume", resume)["ok"] is True
        assert resumer.wait_end("slow")[0] == "done"
        rest = resumer.text("slow")
        resumer.close()
        assert "".join(c["delta"] for c in held) + rest == upstream_text(
            long_prompt, 4000
        )
    finally:
        slow.sock.close()
        bystander.close()
    wait_sessions(guarded, 0)
