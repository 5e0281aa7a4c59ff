"""Hosts and origins, tried the way a hostile page does it over raw HTTP: a page on a
name rebound to the relay's address (DNS rebinding), origins added by
``CORS_ALLOWED_ORIGINS``, and ``X-Forwarded-*`` headers from a peer that is not the
trusted proxy. Every route, the Engine.IO handshakes included, follows one rule."""

import base64
import http.client
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import Recorder, Relay, relay_env, upstream_text

REBOUND = "evil.example"
GOOD = "http://good.example"
BAD = "http://bad.example"
PUBLIC = "chat.example"
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def send(
    relay: Relay,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
    address: str = "127.0.0.1",
) -> Answer:
    """One raw HTTP request to the relay from ``address``, with exactly ``headers``
    (a ``Host`` among them replaces the relay's)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", relay.port, timeout=10, source_address=(address, 0)
    )
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        answer = Answer(response.status, response.headers, response.read())
    finally:
        conn.close()
    if answer.status == 200 and path == HANDSHAKE:
        # End the session it opened, as a leaving client does.
        sid = json.loads(answer.body[1:])["sid"]
        closed = send(relay, "POST", f"{HANDSHAKE}&sid={sid}", {}, b"1", address)
        assert closed.status == 200
    return answer


def upgrade(relay: Relay, host: str, origin: str) -> tuple[str, bytes]:
    """A raw WebSocket handshake to Engine.IO: the status line, and the body of a
    refusal (empty for an upgrade)."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {host}\r\nOrigin: {origin}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, f"closed without an answer: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n")[0].decode()
        if status.startswith("HTTP/1.1 101"):
            return status, b""
        lengths = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        while len(body) < sum(lengths):
            chunk = sock.recv(4096)
            assert chunk, "closed mid-body"
            body += chunk
        return status, body


def refused_host(answer: Answer, openai_shape: bool = False) -> None:
    assert answer.status == 400, (answer.status, answer.body[:200])
    if openai_shape:
        error = answer.json()["error"]
        assert error["code"] == "host_not_allowed"
        assert error["type"] == "invalid_request_error"
        assert "ALLOWED_HOSTS" in error["message"]
    else:
        assert answer.json() == {
            "code": "host_not_allowed",
            "message": answer.json()["message"],
            "retryable": False,
        }
        assert "ALLOWED_HOSTS" in answer.json()["message"]
    assert "Access-Control-Allow-Origin" not in answer.headers


# -- DNS rebinding: a page on a name of the attacker's that resolves to the relay ------


def rebound_headers(relay: Relay) -> dict[str, str]:
    """What a browser sends from ``http://evil.example:PORT`` once the name resolves
    to the relay: the same origin, by the browser's rules."""
    return {
        "Host": f"{REBOUND}:{relay.port}",
        "Origin": f"http://{REBOUND}:{relay.port}",
    }


def test_a_rebound_page_gets_host_not_allowed_on_every_route(relay, upstream):
    headers = rebound_headers(relay)
    marker = f"rebound-{os.urandom(4).hex()}"
    body = json.dumps(
        {"messages": [{"role": "user", "content": f"{marker} [[tokens:4]]"}]}
    ).encode()
    chat = send(
        relay,
        "POST",
        "/v1/chat/completions",
        {**headers, "Content-Type": "application/json"},
        body,
    )
    refused_host(chat, openai_shape=True)
    refused_host(send(relay, "GET", "/v1/models", headers), openai_shape=True)
    preflight = {**headers, "Access-Control-Request-Method": "POST"}
    refused_host(
        send(relay, "OPTIONS", "/v1/chat/completions", preflight), openai_shape=True
    )
    for path in ("/", "/demo", "/healthz", "/metrics", HANDSHAKE):
        refused_host(send(relay, "GET", path, headers))
    assert not [r for r in upstream.requests() if marker in json.dumps(r)]
    # The page's own address is answered as before.
    own = {"Host": f"127.0.0.1:{relay.port}", "Origin": relay.url}
    assert send(relay, "GET", "/v1/models", own).status == 200
    assert send(relay, "GET", HANDSHAKE, own).status == 200


def test_a_rebound_page_cannot_open_a_websocket(relay):
    host = f"{REBOUND}:{relay.port}"
    status, body = upgrade(relay, host, f"http://{host}")
    assert status.startswith("HTTP/1.1 400"), status
    assert json.loads(body)["code"] == "host_not_allowed"
    status, body = upgrade(relay, f"127.0.0.1:{relay.port}", relay.url)
    assert status.startswith("HTTP/1.1 101"), status


def test_addresses_and_localhost_are_answered_and_other_names_refused(relay):
    port = relay.port
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"LocalHost:{port}",
        f"[::1]:{port}",
        "10.1.2.3",
        "127.0.0.1",
    ):
        assert send(relay, "GET", "/healthz", {"Host": host}).status == 200, host
    for host in (
        f"{REBOUND}:{port}",
        REBOUND,
        f"127.0.0.1.nip.io:{port}",
        f"localhost.{REBOUND}:{port}",
        f"user@127.0.0.1:{port}",
        f"[{REBOUND}]:{port}",
        "",
    ):
        refused_host(send(relay, "GET", "/healthz", {"Host": host}))


# -- origins added by CORS_ALLOWED_ORIGINS, and forwarded headers ----------------------


@pytest.fixture(scope="module")
def proxied(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """A relay that lets ``http://good.example`` in besides its own page, behind a
    trusted proxy at 127.0.0.1 that serves it as ``chat.example``."""
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(
            upstream,
            CORS_ALLOWED_ORIGINS=GOOD,
            TRUSTED_PROXIES="127.0.0.1",
            ALLOWED_HOSTS=PUBLIC,
        ),
    )
    yield server
    server.quit()


def test_allowed_origins_are_added_to_the_pages_own(proxied):
    # The page's own origin still connects over WebSocket, and chats (the
    # WebSocket client sends its URL's origin, as the page does).
    client = Recorder(proxied.url, transports=["websocket"])
    try:
        prompt = "Same origin beside an allowed one [[tokens:5]]"
        assert client.chat("own", prompt)["ok"] is True
        assert client.wait_end("own")[0] == "done"
        assert client.text("own") == upstream_text(prompt, 5)
    finally:
        client.close()
    own = send(proxied, "GET", HANDSHAKE, {"Origin": proxied.url})
    assert own.status == 200
    assert own.headers["Access-Control-Allow-Origin"] == proxied.url
    good = send(proxied, "GET", HANDSHAKE, {"Origin": GOOD})
    assert good.status == 200
    assert good.headers["Access-Control-Allow-Origin"] == GOOD
    assert send(proxied, "GET", HANDSHAKE, {"Origin": BAD}).status == 400
    models = send(proxied, "GET", "/v1/models", {"Origin": GOOD})
    assert models.status == 200
    assert models.headers["Access-Control-Allow-Origin"] == GOOD
    bad = send(proxied, "GET", "/v1/models", {"Origin": BAD})
    assert bad.status == 403
    assert bad.json()["error"]["code"] == "forbidden_origin"
    assert "Access-Control-Allow-Origin" not in bad.headers


def forwarded(host: str, scheme: str = "https") -> dict[str, str]:
    """A proxy's report that a browser at ``scheme://host`` asked, and that page's
    Origin."""
    return {
        "X-Forwarded-Host": host,
        "X-Forwarded-Proto": scheme,
        "Origin": f"{scheme}://{host}",
    }


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(relay, proxied):
    # What an untrusted peer says of the browser's host is not believed, so
    # https://chat.example is not its own origin: not on a relay that trusts no
    # proxy, nor from 127.0.0.2 when only the proxy at 127.0.0.1 is trusted.
    for server, address in ((relay, "127.0.0.1"), (proxied, "127.0.0.2")):
        headers = forwarded(PUBLIC)
        handshake = send(server, "GET", HANDSHAKE, headers, address=address)
        assert handshake.status == 400
        assert "Access-Control-Allow-Origin" not in handshake.headers
        models = send(server, "GET", "/v1/models", headers, address=address)
        assert models.status == 403
        assert models.json()["error"]["code"] == "forbidden_origin"
        # Nor is a host it names refused: the Host it connected with counts.
        plain = {"X-Forwarded-Host": f"{REBOUND}:80"}
        assert send(server, "GET", "/healthz", plain, address=address).status == 200


def test_forwarded_headers_from_the_trusted_proxy_are_believed(proxied):
    headers = forwarded(PUBLIC)
    handshake = send(proxied, "GET", HANDSHAKE, headers)
    assert handshake.status == 200
    assert handshake.headers["Access-Control-Allow-Origin"] == f"https://{PUBLIC}"
    assert send(proxied, "GET", "/v1/models", headers).status == 200
    # Another scheme is another origin.
    assert send(proxied, "GET", HANDSHAKE, forwarded(PUBLIC, "http")).status == 200
    http_page = {**forwarded(PUBLIC), "Origin": f"http://{PUBLIC}"}
    assert send(proxied, "GET", HANDSHAKE, http_page).status == 400
    # A name the proxy forwards is checked as the browser's Host would be.
    refused_host(send(proxied, "GET", HANDSHAKE, forwarded(REBOUND)))
    refused_host(
        send(proxied, "GET", "/v1/models", forwarded(f"{REBOUND}:443")),
        openai_shape=True,
    )


# -- the settings, in process ----------------------------------------------------------


def rules(**settings):
    """The rules of a configuration with ``settings``."""
    from app.origins import Origins

    config = {
        "ALLOWED_HOSTS": [],
        "HOST": "127.0.0.1",
        "CORS_ALLOWED_ORIGINS": [],
        "TRUSTED_PROXIES": [],
        **settings,
    }
    return Origins(config)


def test_the_default_hosts_follow_host():
    # Bound to an address (loopback, or every interface): addresses and localhost.
    for bound in ("127.0.0.1", "0.0.0.0", "::"):
        assert rules(HOST=bound).hosts == set()
    # Bound to a name: that name too, on any port.
    named = rules(HOST="chat.lan")
    assert named.host_allowed("chat.lan:5000", "http")
    assert not named.host_allowed("other.lan:5000", "http")
    # A port in ALLOWED_HOSTS is that port only; none is the scheme's own.
    ported = rules(ALLOWED_HOSTS=["chat.example:443"])
    assert ported.host_allowed("chat.example", "https")
    assert ported.host_allowed("chat.example:443", "http")
    assert not ported.host_allowed("chat.example", "http")
    assert not ported.host_allowed("chat.example:8443", "https")
    assert rules(ALLOWED_HOSTS=["*"]).host_allowed(f"{REBOUND}:80", "http")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("ALLOWED_HOSTS", "chat.example/path"),
        ("ALLOWED_HOSTS", "http://chat.example"),
        ("CORS_ALLOWED_ORIGINS", "good.example"),
        ("CORS_ALLOWED_ORIGINS", "ftp://good.example"),
    ],
)
def test_a_malformed_setting_stops_the_start_naming_it(setting, value):
    with pytest.raises(ValueError, match=f"^{setting}: '{re.escape(value)}' is not"):
        rules(**{setting: [value]})
