"""Who may connect, the per-user limits, upstream resilience and graceful shutdown,
each against a real relay process configured for it."""

import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import socketio
import websocket

from app.auth import client_address, mint_token
from app.relay import ReapedMemoryStorage

from .conftest import (
    UNLIMITED,
    Recorder,
    Relay,
    relay_env,
    upstream_text,
    wait_until,
)

SECRET = "test-auth-secret"
STATIC = "static-token-abc123"


@pytest.fixture(scope="module")
def authed(async_mode, tmp_session, upstream):
    """A relay that demands a static or a signed token."""
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(upstream, AUTH_TOKENS=f"{STATIC},another", AUTH_SECRET=SECRET),
    )
    yield server
    server.quit()


def refusal(url: str, auth) -> dict:
    """Connect and expect a refusal; return the connect error's payload."""
    client = socketio.Client(reconnection=False)
    errors = []
    client.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, auth=auth, wait_timeout=5)
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "requires a token"),
        ({}, "requires a token"),
        ({"token": 42}, "requires a token"),
        ({"token": "wrong"}, "not valid"),
        ({"token": mint_token("other-secret", "eve", 60)}, "not valid"),
        ({"token": mint_token(SECRET, "bob", -1)}, "expired"),
    ],
)
def test_connection_without_a_valid_token_is_refused(authed, auth, reason):
    error = refusal(authed.url, auth)
    assert reason in error["message"]
    assert error["data"] == {"code": "unauthorized", "retryable": False}


@pytest.mark.parametrize(
    "token", [STATIC, "another", mint_token(SECRET, "alice", 3600)], ids=str
)
def test_valid_token_connects_and_chats(authed, token):
    client = Recorder(authed.url, auth={"token": token})
    try:
        assert client.chat("a", "hello")["ok"]
        assert client.wait_end("a")[0] == "done"
    finally:
        client.close()


def mint_command(name: str, ttl: str) -> str:
    """The token ``python -m app.auth mint`` prints."""
    return subprocess.run(
        [sys.executable, "-m", "app.auth", "mint", name, "--ttl", ttl],
        env={"AUTH_SECRET": SECRET, "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_mint_command_prints_a_token_the_server_accepts(authed):
    token = mint_command("carol", "60")
    owner = Recorder(authed.url, auth={"token": token}, transports=["websocket"])
    ack = owner.chat("c", "carol's [[tokens:2000]] [[tps:40]]")
    owner.wait(lambda c: c.chunks("c"))
    owner.cut()
    # The token names carol: another user may not pick her answer up; carol may,
    # with any token naming her.
    others = [
        Recorder(authed.url, auth={"token": mint_token(SECRET, name, 60)})
        for name in ("dave", "carol")
    ]
    try:
        resume = {"id": "c", "token": ack["resume_token"], "after": -1}
        assert others[0].call("resume", resume)["error"]["code"] == "resume_denied"
        assert others[1].call("resume", resume)["ok"] is True
        assert others[1].call("stop", {"id": "c"})["ok"] is True
        assert others[1].wait_end("c")[1]["finish_reason"] == "cancelled"
    finally:
        for client in others:
            client.close()


def test_mint_command_honours_its_ttl(authed):
    error = refusal(authed.url, {"token": mint_command("carol", "-1")})
    assert "expired" in error["message"]


def handshake(url: str, origin: str | None) -> int:
    headers = {"Origin": origin} if origin else {}
    request = urllib.request.Request(
        url + "/socket.io/?EIO=4&transport=polling", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_handshake_from_another_origin_is_refused(relay):
    assert handshake(relay.url, "http://evil.example") == 400
    assert handshake(relay.url, relay.url) == 200
    # Programs that send no Origin (not browsers) may connect.
    assert handshake(relay.url, None) == 200


def test_websocket_from_another_origin_is_refused(relay):
    url = relay.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    with pytest.raises(websocket.WebSocketException):
        ws = websocket.create_connection(url, origin="http://evil.example", timeout=5)
        # Some refusals arrive as a closed socket right after the upgrade.
        ws.recv()
    ws = websocket.create_connection(url, origin=relay.url, timeout=5)
    assert ws.recv().startswith("0{")
    ws.close()


@pytest.fixture(scope="module")
def allowlisted(async_mode, tmp_session, upstream):
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(upstream, CORS_ALLOWED_ORIGINS="https://chat.example"),
    )
    yield server
    server.quit()


def test_allowlisted_origin_is_accepted(allowlisted):
    assert handshake(allowlisted.url, "https://chat.example") == 200
    assert handshake(allowlisted.url, "https://other.example") == 400


@pytest.fixture(scope="module")
def limited(async_mode, tmp_session, upstream):
    """A relay with small per-user limits, behind a trusted proxy at 127.0.0.1."""
    env = relay_env(
        upstream,
        MAX_STREAMS_PER_IDENTITY="2",
        CHATS_PER_MINUTE="5",
        TRUSTED_PROXIES="127.0.0.1",
        UPSTREAM_MAX_RETRIES="2",
    )
    server = Relay(tmp_session, async_mode, env)
    yield server
    server.quit()


def from_address(url: str, address: str) -> Recorder:
    return Recorder(url, headers={"X-Forwarded-For": address})


def test_streams_per_user_are_capped_across_connections(limited):
    clients = [from_address(limited.url, "10.0.0.1") for _ in range(3)]
    try:
        for n, client in enumerate(clients[:2]):
            assert client.chat(f"s{n}", "long [[tokens:300]] [[tps:50]]")["ok"]
        ack = clients[2].chat("s2", "one more")
        assert ack["error"]["code"] == "busy"
        assert "this user" in ack["error"]["message"]
        # Another user behind the same proxy is not affected.
        other = from_address(limited.url, "10.0.0.2")
        assert other.chat("x", "hi")["ok"]
        assert other.wait_end("x")[0] == "done"
        other.close()
        # Stopping one frees a place, and the refused connection is still usable.
        assert clients[0].call("stop", {"id": "s0"})["ok"]
        assert clients[2].chat("s3", "now?")["ok"]
    finally:
        for client in clients:
            client.close()


def test_chats_per_minute_are_limited(limited):
    client = from_address(limited.url, "10.0.0.3")
    try:
        for n in range(5):
            assert client.chat(f"c{n}", "quick [[tokens:2]]")["ok"]
            client.wait_end(f"c{n}")
        ack = client.chat("c5", "one too many")
        assert ack["error"]["code"] == "rate_limited"
        error = client.terminal("c5")[1]
        assert error["retryable"] is True
        # A new connection does not reset an anonymous user's allowance.
        again = from_address(limited.url, "10.0.0.3")
        assert again.chat("c6", "again")["error"]["code"] == "rate_limited"
        again.close()
    finally:
        client.close()


@pytest.fixture(scope="module")
def untrusting(async_mode, tmp_session, upstream):
    """A relay that trusts no proxy and allows one stream per user."""
    env = relay_env(upstream, MAX_STREAMS_PER_IDENTITY="1", CHATS_PER_MINUTE="100")
    server = Relay(tmp_session, async_mode, env)
    yield server
    server.quit()


def test_forwarded_for_from_an_untrusted_peer_does_not_dodge_limits(untrusting):
    first = from_address(untrusting.url, "10.9.9.1")
    second = from_address(untrusting.url, "10.9.9.2")
    try:
        assert first.chat("a", "long [[tokens:300]] [[tps:50]]")["ok"]
        assert second.chat("b", "me too")["error"]["code"] == "busy"
    finally:
        first.close()
        second.close()


def test_forwarded_for_names_the_client_behind_trusted_proxies():
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6"}
    assert client_address(environ, []) == "127.0.0.1"
    assert client_address(environ, ["10.0.0.0/8"]) == "127.0.0.1"
    assert client_address(environ, ["127.0.0.1"]) == "6.6.6.6"
    chained = {**environ, "HTTP_X_FORWARDED_FOR": "1.2.3.4, 6.6.6.6, 10.1.1.1"}
    assert client_address(chained, ["127.0.0.1", "10.0.0.0/8"]) == "6.6.6.6"


def test_long_prompt_gets_an_error_event_not_a_dropped_connection(relay, connect):
    client = connect()
    # 10,001 characters of non-ASCII text: over the prompt limit, under 64 KB.
    ack = client.chat("big", "é" * 10001)
    assert ack["error"]["code"] == "invalid_request"
    assert "10000" in ack["error"]["message"]
    assert client.sio.connected
    assert client.chat("after", "still here?")["ok"]


def test_message_over_the_transport_limit_closes_the_connection(relay, connect):
    client = connect()
    # Past the default MAX_MESSAGE_BYTES (8 MiB), which leaves room for images.
    client.sio.emit("chat", {"id": "huge", "message": "x" * (8 * 1024 * 1024 + 1)})
    wait_until(lambda: not client.sio.connected, what="the connection to close")
    assert relay.health()["status"] == "ok"


def test_rate_counters_start_no_thread_and_are_freed_by_the_reaper():
    storage = ReapedMemoryStorage()
    storage.timer.join()  # the one timer limits starts when the storage is made
    threads = threading.active_count()
    assert storage.incr("chats/addr:1", 0.05) == 1
    assert threading.active_count() == threads
    past_expiry(storage, "chats/addr:1")
    assert storage.get("chats/addr:1") == 0  # expired as it is read
    storage.incr("chats/addr:2", 0.05)
    past_expiry(storage, "chats/addr:2")
    assert "chats/addr:2" in storage.storage  # nothing has freed it yet
    storage.expire()
    assert "chats/addr:2" not in storage.storage


def past_expiry(storage: ReapedMemoryStorage, key: str) -> None:
    """Wait until the moment ``key`` expires (by the storage's own record) passed."""
    expiry = storage.expirations[key]
    wait_until(lambda: time.time() > expiry, what=f"{key} to expire")


def test_outage_is_retried_before_the_first_token(limited, upstream, async_mode):
    client = from_address(limited.url, "10.0.0.4")
    marker = f"retry me {async_mode}"
    try:
        assert client.chat("r", f"{marker} [[status:503]]")["ok"]
        assert client.wait_end("r")[1]["code"] == "upstream_unavailable"
    finally:
        client.close()
    tries = [r for r in upstream.requests() if marker in r["messages"][-1]["content"]]
    assert len(tries) == 3


def test_no_retry_once_text_was_sent(limited, upstream, async_mode):
    client = from_address(limited.url, "10.0.0.5")
    prompt = f"cut me {async_mode} [[close_after:2]]"
    try:
        assert client.chat("r", prompt)["ok"]
        assert client.wait_end("r")[1]["code"] == "upstream_unavailable"
        assert client.text("r") == upstream_text(prompt, first=2)
    finally:
        client.close()
    tries = [r for r in upstream.requests() if r["messages"][-1]["content"] == prompt]
    assert len(tries) == 1


def test_failing_upstream_trips_the_breaker_and_fails_fast(
    async_mode, tmp_session, upstream
):
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(
            upstream,
            OPENAI_BASE_URL="http://127.0.0.1:9/v1",
            UPSTREAM_FAILURES_TO_TRIP="2",
            UPSTREAM_COOLDOWN_SECONDS="60",
        ),
    )
    client = Recorder(server.url)
    try:
        for n in range(2):
            assert client.chat(f"f{n}", "anyone?")["ok"]
            assert client.wait_end(f"f{n}")[1]["code"] == "upstream_unavailable"
        ack = client.chat("fast", "and now?")
        assert ack["ok"] is False
        assert ack["error"]["code"] == "upstream_unavailable"
        assert "retry in" in ack["error"]["message"]
    finally:
        client.close()
        server.quit()


def test_sigterm_drains_streams_then_exits_cleanly(async_mode, tmp_session, upstream):
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(upstream, SHUTDOWN_GRACE_SECONDS="2", **UNLIMITED),
    )
    short, long, late = (Recorder(server.url) for _ in range(3))
    assert short.chat("short", "short one [[tokens:40]] [[tps:40]]")["ok"]
    assert long.chat("long", "long one [[tokens:1000]] [[tps:40]]")["ok"]
    long.wait(lambda c: len(c.chunks("long")) >= 1)
    server.process.proc.send_signal(signal.SIGTERM)
    server.wait_log("SIGTERM: draining")

    ack = late.chat("late", "too late?")
    assert ack["error"]["code"] == "shutting_down"
    assert ack["error"]["retryable"] is True
    assert short.wait_end("short")[0] == "done"
    name, error = long.wait_end("long", timeout=30)
    assert name == "error"
    assert error["code"] == "shutting_down"
    assert error["retryable"] is True
    assert server.process.proc.wait(20) == 0
    server.process.stop()
    assert short.text("short") and short.terminal("short")[1]["finish_reason"] == "stop"
