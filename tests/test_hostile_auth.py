"""Authentication fails closed: no token of any shape, and no fault while a connection
is checked, lets a client in; a signed token that expires mid-connection starts no
more chats. Hostile clients speak raw WebSocket frames and raw HTTP headers."""

import base64
import http.client
import json
import socket
import time

import pytest
from itsdangerous import URLSafeSerializer

from app.auth import mint_token

from .clients import RawSocketIO
from .conftest import Recorder, Relay, relay_env, upstream_text, wait_until

SECRET = "hostile-auth-secret"
STATIC = "static-token-9f3Kq7"
# What a refused token gets, over Socket.IO and over HTTP.
UNAUTHORIZED = {"code": "unauthorized", "retryable": False}
# The relay's connect path fails for connections from these addresses
# (``faulty_app``): in the handler, and again while the handler refuses.
FAULT_IN_HANDLER = "127.0.9.1"
FAULT_WHILE_REFUSING = "127.0.9.2"


@pytest.fixture(scope="module")
def static(async_mode, tmp_session, upstream):
    """A relay that demands one of AUTH_TOKENS."""
    server = Relay(tmp_session, async_mode, relay_env(upstream, AUTH_TOKENS=STATIC))
    yield server
    server.quit()


@pytest.fixture(scope="module")
def signed(async_mode, tmp_session, upstream):
    """A relay that demands a token signed with AUTH_SECRET."""
    server = Relay(tmp_session, async_mode, relay_env(upstream, AUTH_SECRET=SECRET))
    yield server
    server.quit()


@pytest.fixture(params=["static", "signed"])
def guarded(request, async_mode) -> tuple[Relay, str]:
    """Each relay that demands a token, with a token it accepts (in each async mode:
    the relays it picks from depend on it)."""
    if request.param == "static":
        return request.getfixturevalue("static"), STATIC
    return request.getfixturevalue("signed"), mint_token(SECRET, "alice", 3600)


def signed_claims(claims: str) -> str:
    """A token correctly signed with SECRET whose claims are ``claims``, JSON text
    as written (escapes included): anything at all."""
    serializer = URLSafeSerializer(SECRET, salt="chatstream-auth")
    payload = base64.urlsafe_b64encode(claims.encode()).rstrip(b"=")
    return serializer.make_signer().sign(payload).decode()


def connect_raw(url: str, address: str, auth_json: str) -> tuple[RawSocketIO, dict]:
    """A raw Socket.IO CONNECT whose auth payload is ``auth_json``, JSON text as sent;
    return the connection and the connect error it got."""
    raw = RawSocketIO(url, address, connect=False)
    raw.send("40" + auth_json)
    packet = raw.next_packet()
    assert packet.startswith("44"), f"not refused: {packet}"
    return raw, json.loads(packet[2:])


def socketio_packets_after(raw: RawSocketIO, first: int) -> list[str]:
    """Close our side, read to the end, and return the Socket.IO packets (not
    Engine.IO pings) that came after the first ``first``."""
    raw.sock.shutdown(socket.SHUT_WR)
    raw.drain()
    raw.sock.close()
    return [p for p in raw.packets[first:] if p.startswith("4")]


def marked(upstream, marker: str) -> list[dict]:
    return [r for r in upstream.requests() if marker in r["messages"][-1]["content"]]


def chat_to_the_end(url: str, token: str | None, prompt: str) -> None:
    """A client that may chat does so to the end: by then the relay has handled
    what was sent before it."""
    client = Recorder(url, auth={"token": token} if token else None)
    try:
        assert client.chat("fine", prompt)["ok"]
        assert client.wait_end("fine")[0] == "done"
        assert client.text("fine") == upstream_text(prompt)
    finally:
        client.close()


# -- a token that is not text ----------------------------------------------------------


def test_lone_surrogate_token_is_refused_and_its_chat_never_reaches_the_upstream(
    guarded, upstream, async_mode
):
    server, token = guarded
    marker = f"surrogate smuggled {async_mode} {server.port}"
    raw, error = connect_raw(server.url, "127.0.7.1", '{"token":"\\ud800"}')
    assert error == {"message": "the token is not valid", "data": UNAUTHORIZED}
    raw.send("421" + json.dumps(["chat", {"id": "x", "message": marker}]))
    chat_to_the_end(server.url, token, f"after the surrogate {async_mode}")
    assert marked(upstream, marker) == []
    assert socketio_packets_after(raw, 2) == []


HOSTILE_AUTH = {
    "lone high surrogate": {"token": "\ud800"},
    "lone low surrogate after a valid token": {"token": STATIC + "\udc80"},
    "surrogate pair halves reversed": {"token": "\udc00\ud800"},
    "NUL": {"token": "\x00"},
    "valid token and NUL": {"token": STATIC + "\x00"},
    "valid token cut short": {"token": STATIC[:-1]},
    "60,000 characters": {"token": "A" * 60000},
    "8,000 non-ASCII characters": {"token": "\u00e9" * 8000},
    "list": {"token": [STATIC]},
    "object": {"token": {"token": STATIC}},
    "number": {"token": 1e308},
    "true": {"token": True},
    "null": {"token": None},
    "surrogate as a key": {"\ud800": STATIC},
    "auth a string": "\ud800",
    "auth a list": [STATIC],
    "signed, subject a lone surrogate": {
        "token": signed_claims('{"sub": "\\ud800", "exp": 4102444800}')
    },
    "signed, subject a number": {
        "token": signed_claims('{"sub": 7, "exp": 4102444800}')
    },
    "signed, expiry text": {"token": signed_claims('{"sub": "eve", "exp": "never"}')},
    "signed, expiry true": {"token": signed_claims('{"sub": "eve", "exp": true}')},
    "signed, claims a list": {"token": signed_claims('["eve", 4102444800]')},
    "signed, claims not JSON": {"token": signed_claims('{"sub": "eve", ')},
    "signed, then a surrogate": {"token": mint_token(SECRET, "eve", 3600) + "\ud800"},
    "signed, then a letter not ASCII": {
        "token": mint_token(SECRET, "eve", 3600) + "\u00e9"
    },
}


@pytest.mark.parametrize("auth", HOSTILE_AUTH.values(), ids=HOSTILE_AUTH)
def test_token_of_any_shape_is_refused_with_unauthorized(guarded, auth):
    server, _ = guarded
    # json.dumps writes a lone surrogate as the \ud800 escape a hostile client sends.
    raw, error = connect_raw(server.url, "127.0.7.2", json.dumps(auth))
    raw.sock.close()
    assert error["data"] == UNAUTHORIZED


HOSTILE_BEARERS = {
    "lone surrogate as UTF-8": b"\xed\xa0\x80",
    "valid token and a lone surrogate": STATIC.encode() + b"\xed\xa0\x80",
    "invalid UTF-8": b"\xff\xfe\xfd",
    "signed token and invalid UTF-8": mint_token(SECRET, "eve", 3600).encode()
    + b"\xc3",
}


@pytest.mark.parametrize("token", HOSTILE_BEARERS.values(), ids=HOSTILE_BEARERS)
def test_bearer_token_that_is_not_text_is_refused(guarded, upstream, token):
    server, _ = guarded
    marker = f"bearer smuggled {server.port} {token!r}"
    body = json.dumps(
        {"model": "test-model", "messages": [{"role": "user", "content": marker}]}
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Authorization", b"Bearer " + token)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body.encode())
        response = conn.getresponse()
        refusal = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 401
    assert refusal["error"]["code"] == "unauthorized"
    assert marked(upstream, marker) == []


# -- a fault while a connection is checked ---------------------------------------------


def faulty_app():
    """The relay, whose connect path raises for connections from the fault
    addresses: when it counts the connection, and for FAULT_WHILE_REFUSING again
    when it counts the refusal. gunicorn loads it as
    ``tests.test_hostile_auth:faulty_app()``."""
    from flask import request

    import wsgi

    admission = wsgi.app.extensions["admission"]
    take, count_refusal = admission.identities.take, admission.count_refusal

    def failing_take(sid: str, identity: str) -> bool:
        if request.remote_addr in (FAULT_IN_HANDLER, FAULT_WHILE_REFUSING):
            raise RuntimeError("a fault in the connect path")
        return take(sid, identity)

    def failing_count_refusal(code: str) -> None:
        if request.remote_addr == FAULT_WHILE_REFUSING:
            raise RuntimeError("a fault while refusing")
        count_refusal(code)

    admission.identities.take = failing_take
    admission.count_refusal = failing_count_refusal
    return wsgi.app


@pytest.fixture(scope="module")
def faulty(async_mode, tmp_session, upstream):
    """An open relay (no tokens) whose connect path fails for the fault addresses."""
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(upstream),
        app="tests.test_hostile_auth:faulty_app()",
    )
    yield server
    server.quit()


@pytest.mark.parametrize("address", [FAULT_IN_HANDLER, FAULT_WHILE_REFUSING])
def test_fault_in_the_connect_path_refuses_the_connection(
    faulty, upstream, async_mode, address
):
    marker = f"fault smuggled {async_mode} {address}"
    raw, error = connect_raw(faulty.url, address, "")
    assert error == {
        "message": "the server failed to check the connection",
        "data": {"code": "internal", "retryable": False},
    }
    raw.send("421" + json.dumps(["chat", {"id": "x", "message": marker}]))
    # The relay goes on for everyone else.
    chat_to_the_end(faulty.url, None, f"after the fault {async_mode} {address}")
    assert marked(upstream, marker) == []
    assert socketio_packets_after(raw, 2) == []
    faulty.wait_log("a fault in the connect path")


# -- a signed token that expires on an open connection ---------------------------------


def expiry_of(token: str) -> int:
    """The ``exp`` claim of a signed token (its payload is base64url JSON)."""
    payload = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[
        "exp"
    ]


def test_expired_token_starts_no_chat_on_its_open_connection(
    signed, upstream, async_mode
):
    token = mint_token(SECRET, "erin", 4)
    client = Recorder(signed.url, auth={"token": token})
    long_prompt = (
        f"an answer that outlives its token {async_mode} [[tokens:200]] [[tps:20]]"
    )
    late = f"a chat after the token expired {async_mode}"
    try:
        assert client.chat("long", long_prompt)["ok"]
        wait_until(lambda: time.time() > expiry_of(token), 15, "the token to expire")
        ack = client.chat("late", late)
        held = len(client.chunks("long"))
        assert ack == {
            "ok": False,
            "error": {
                "code": "unauthorized",
                "message": "the token has expired; reconnect with a new one",
                "retryable": False,
            },
        }
        assert client.terminal("late")[1]["code"] == "unauthorized"
        # The answer already running goes on to its end, on the same connection.
        assert client.wait_end("long", timeout=30)[0] == "done"
        assert client.text("long") == upstream_text(long_prompt, 200)
        assert len(client.chunks("long")) > held
        assert client.sio.connected
    finally:
        client.close()
    assert marked(upstream, late) == []
