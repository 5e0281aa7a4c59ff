"""The HTTP side under hostile clients, in each async mode: bodies bounded while they
arrive (size, pace, and a place of their address while they do), request heads that
stop arriving, streams nobody reads, text that is no text, JSON too deep to parse,
and an upstream whose errors are its own business."""

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import requests

from bench.procstat import status_kb

from .clients import (
    RawSocketIO,
    Recorder,
    bound_socket,
    metric,
    refusals,
    sio_from,
    sse_event,
    worker_pid,
)
from .conftest import Relay, free_port, relay_env, upstream_text, wait_until

PER_ADDRESS = 3
BODY_BYTES = 2 * 1024 * 1024
READ_TIMEOUT = 2
QUEUED_BYTES = 256 * 1024
WRITE_TIMEOUT = 3
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def limited(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """A relay with small HTTP limits. Each test comes from loopback addresses of its
    own (127.0.N.x), so that one test's places are not another's."""
    env = relay_env(
        upstream,
        MAX_CONNECTIONS_PER_ADDRESS=str(PER_ADDRESS),
        MAX_BODY_BYTES=str(BODY_BYTES),
        REQUEST_READ_TIMEOUT=str(READ_TIMEOUT),
        MAX_QUEUED_BYTES=str(QUEUED_BYTES),
        RESPONSE_WRITE_TIMEOUT=str(WRITE_TIMEOUT),
        # Long enough that a closed slow reader's answer is still kept to resume.
        RESUME_GRACE_SECONDS="60",
    )
    server = Relay(tmp_session, async_mode, env)
    yield server
    server.quit()


# -- raw HTTP --------------------------------------------------------------------------


def send_head(relay: Relay, address: str, head: str, **options: int) -> socket.socket:
    sock = bound_socket(relay.url, address, **options)
    sock.sendall(head.encode())
    return sock


def post_head(path: str, length: int | None, chunked: bool = False) -> str:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    )


def response_of(sock: socket.socket) -> tuple[int, http.client.HTTPMessage, Any]:
    """The status, headers and JSON body of the response on ``sock``."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.headers, json.loads(response.read())


def closed(sock: socket.socket) -> bool:
    """Whether the server ends the connection (what it still sends is read)."""
    try:
        while data := sock.recv(65536):
            del data
    except ConnectionResetError:
        pass
    return True


def chat_body(prompt: str, **fields: Any) -> bytes:
    messages = [{"role": "user", "content": prompt}]
    return json.dumps({"messages": messages, **fields}).encode()


# -- bodies: size --------------------------------------------------------------------


def test_a_body_announced_over_the_cap_is_refused_before_it_is_read(limited):
    # The probe: 100 MB announced to /v1 (the worker read it all, +233 MB, for a 400).
    sock = send_head(limited, "127.0.10.1", post_head("/v1/chat/completions", 10**8))
    status, _, body = response_of(sock)
    assert status == 413
    assert body["error"]["code"] == "body_too_large"
    assert body["error"]["type"] == "invalid_request_error"
    assert str(BODY_BYTES) in body["error"]["message"]
    assert closed(sock)
    # Any route, in the relay's own error shape.
    sock = send_head(limited, "127.0.10.1", post_head("/socket.io/?EIO=4", 10**8))
    status, _, body = response_of(sock)
    assert status == 413
    assert body == {
        "code": "body_too_large",
        "message": f"body: {10**8} bytes; the limit is {BODY_BYTES}",
        "retryable": False,
    }
    assert refusals(limited, "body_too_large") >= 2


def test_a_chunked_body_is_counted_as_it_arrives_and_cut_at_the_cap(limited):
    worker = worker_pid(limited)
    rss_before = status_kb(worker, "VmRSS")
    sock = send_head(
        limited, "127.0.11.1", post_head("/v1/chat/completions", None, chunked=True)
    )
    piece = b"%x\r\n%s\r\n" % (MIB, b" " * MIB)
    sent = []

    def send_100_mb() -> None:
        try:
            for _ in range(100):
                sock.sendall(piece)
                sent.append(MIB)
        except OSError:
            pass  # the server stopped reading and closed

    sender = threading.Thread(target=send_100_mb)
    sender.start()
    status, _, body = response_of(sock)
    assert status == 413
    assert body["error"]["code"] == "body_too_large"
    sock.shutdown(socket.SHUT_RDWR)
    sender.join(timeout=30)
    assert not sender.is_alive()
    # It read to the cap, not the body: most of the 100 MB was never taken.
    assert sum(sent) < 50 * MIB
    growth_kb = status_kb(worker, "VmRSS") - rss_before
    assert growth_kb * 1024 < 8 * BODY_BYTES


def test_a_malformed_chunked_body_is_invalid_request_not_a_500(limited):
    sock = send_head(
        limited, "127.0.11.2", post_head("/v1/chat/completions", None, chunked=True)
    )
    sock.sendall(b'4\r\n{"me\r\nzz\r\n')
    status, _, body = response_of(sock)
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["param"] == "body"
    assert closed(sock)


def test_a_body_under_the_cap_is_served(limited):
    prompt = f"a body near the cap {limited.async_mode}"
    padding = "x" * (BODY_BYTES - 4096)  # an ignored field, to come near the cap
    response = requests.post(
        limited.url + "/v1/chat/completions",
        data=chat_body(prompt, padding=padding),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    message = response.json()["choices"][0]["message"]
    assert message["content"] == upstream_text(prompt)


# -- bodies and heads: pace ------------------------------------------------------------


def test_a_body_that_stops_arriving_gets_408_and_is_closed(limited):
    sock = send_head(limited, "127.0.12.1", post_head("/v1/chat/completions", 100000))
    sock.sendall(b'{"messages": [')
    status, _, body = response_of(sock)
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    assert f"{READ_TIMEOUT} s" in body["error"]["message"]
    assert closed(sock)


@pytest.mark.parametrize(
    "head",
    [
        "GET /heal",  # half a request line
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",
    ],
    ids=["request-line", "headers"],
)
def test_a_request_head_that_stops_arriving_is_dropped(limited, head):
    """gunicorn's gevent and eventlet workers drop it after ``keepalive``; its
    gthread worker held a thread for it for ever."""
    sock = send_head(limited, "127.0.13.1", head)
    sock.settimeout(READ_TIMEOUT + 8)
    assert closed(sock)


def test_unfinished_bodies_hold_their_address_and_another_is_served(limited):
    """The probe: bodies announced and never sent (Content-Length: 100000) held the
    worker's every connection; /healthz from another address got no answer."""
    flood, other = "127.0.14.1", "127.0.14.2"
    refused_before = refusals(limited, "too_many_connections")
    held = []
    for _ in range(PER_ADDRESS):
        sock = send_head(limited, flood, post_head("/v1/chat/completions", 100000))
        sock.sendall(b'{"messages": [')
        held.append(sock)
    # The next one from that address is refused at once, before its body.
    wait_until(
        lambda: _posted(limited, flood)[0] == 429, what="the flood's next body refused"
    )
    status, headers, body = _posted(limited, flood)
    assert body["error"]["code"] == "too_many_connections"
    assert int(headers["Retry-After"]) > 0
    assert refusals(limited, "too_many_connections") > refused_before
    # Another address is served meanwhile.
    status, _, body = _posted(limited, other, chat_body(f"other {limited.async_mode}"))
    assert status == 200
    assert body["choices"][0]["message"]["content"] == upstream_text(
        f"other {limited.async_mode}"
    )
    # The unfinished bodies time out (408), and their places are free again.
    for sock in held:
        assert response_of(sock)[0] == 408
        sock.close()
    status, _, body = _posted(limited, flood, chat_body("the flood, finished"))
    assert status == 200


def _posted(
    relay: Relay, address: str, body: bytes = b'{"messages": []}'
) -> tuple[int, http.client.HTTPMessage, Any]:
    sock = send_head(relay, address, post_head("/v1/chat/completions", len(body)))
    try:
        sock.sendall(body)
        return response_of(sock)
    finally:
        sock.close()


# -- streams nobody reads --------------------------------------------------------------


class SlowReader:
    """A streamed /v1 request over a raw socket with a small receive buffer, which
    reads the response's head and then, until ``drain``, nothing."""

    def __init__(self, relay: Relay, address: str, prompt: str):
        self.sock = bound_socket(relay.url, address, rcvbuf=4096, maxseg=536)
        body = chat_body(prompt, stream=True)
        self.sock.sendall(post_head("/v1/chat/completions", len(body)).encode() + body)
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            received = self.sock.recv(4096)
            assert received, f"closed before the response's head: {self.data!r}"
            self.data += received
        head, self.data = self.data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line
        )
        self.stream_id = headers["Chatstream-Stream-Id"]
        self.token = headers["Chatstream-Resume-Token"]

    def drain(self) -> list[dict[str, Any]]:
        """Read to the end of the connection; the SSE events that came whole."""
        self.sock.settimeout(15)
        assert closed_into(self.sock, self)
        return sse_of(dechunked(self.data))


def closed_into(sock: socket.socket, reader: SlowReader) -> bool:
    try:
        while data := sock.recv(65536):
            reader.data += data
    except ConnectionResetError:
        pass
    return True


def dechunked(data: bytes) -> bytes:
    """An HTTP chunked body, up to where it was cut off."""
    out = b""
    while b"\r\n" in data:
        size_line, rest = data.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        if len(rest) < size + 2:
            break
        data = rest[size + 2 :]
    return out


def sse_of(data: bytes) -> list[dict[str, Any]]:
    """The events that came whole (what follows the last blank line was cut)."""
    events = (sse_event(block) for block in data.split(b"\n\n")[:-1])
    return [event for event in events if event is not None]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(
        e["data"]["choices"][0]["delta"].get("content", "")
        for e in events
        if e["data"] != "[DONE]" and e["data"].get("choices")
    )


def resumed_rest(relay: Relay, reader: SlowReader, held: list) -> list:
    ids = [e["id"] for e in held if "id" in e]
    assert ids == list(range(len(ids)))
    response = requests.get(
        f"{relay.url}/v1/chat/completions/{reader.stream_id}/events",
        headers={
            "Last-Event-ID": str(ids[-1] if ids else -1),
            "Chatstream-Resume-Token": reader.token,
        },
        timeout=30,
    )
    assert response.status_code == 200
    return sse_of(response.content)


def test_a_stream_nobody_reads_is_closed_at_the_queue_cap_and_resumes(limited):
    """The probe: 12 streams never read were still open 80 s later, +160 MB."""
    prompt = f"an answer nobody reads {limited.async_mode} [[tokens:12000]] [[tps:0]]"
    closed_before = metric(limited, "chat_slow_clients_closed_total")
    worker = worker_pid(limited)
    rss_before = status_kb(worker, "VmRSS")
    reader = SlowReader(limited, "127.0.15.1", prompt)
    wait_until(
        lambda: metric(limited, "chat_slow_clients_closed_total") > closed_before,
        what="the unread stream to be closed",
    )
    limited.wait_log(f"{reader.stream_id} cut: {QUEUED_BYTES} bytes waiting")
    # The answer goes on to its end without it, kept for a resume.
    limited.wait_log(f"request {reader.stream_id} finished")
    growth_kb = status_kb(worker, "VmRSS") - rss_before
    # The answer kept (12000 chunks) and the queue up to its cap; without the cap
    # every event waits (the probe's +13 MB a stream).
    assert growth_kb * 1024 < 6 * MIB + 4 * QUEUED_BYTES
    held = reader.drain()
    rest = resumed_rest(limited, reader, held)
    assert rest[-1]["data"] == "[DONE]"
    assert text_of(held) + text_of(rest) == upstream_text(prompt, 12000)


def test_a_stream_write_that_waits_past_the_timeout_is_closed(limited):
    # Paced, so that little waits in the queue: only the write timeout can tell.
    prompt = f"a paced answer nobody reads {limited.async_mode} [[tokens:3000]]"
    prompt += " [[tps:300]]"
    reader = SlowReader(limited, "127.0.16.1", prompt)
    limited.wait_log(f"{reader.stream_id} cut: a write waited {WRITE_TIMEOUT} s")
    held = reader.drain()
    rest = resumed_rest(limited, reader, held)
    assert rest[-1]["data"] == "[DONE]"
    assert text_of(held) + text_of(rest) == upstream_text(prompt, 3000)
    # The cut write is no fault of the server's: nothing of it in the log.
    assert "Traceback" not in limited.process.log_text()


# -- text that is no text, JSON too deep ----------------------------------------------


SURROGATE_BODIES = [
    (
        b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
        "messages[0].content",
    ),
    (
        b'{"messages": [{"role": "user", "content": [{"type": "text", '
        b'"text": "\\udfff"}]}]}',
        "messages[0].content[0].text",
    ),
    (b'{"messages": [{"role": "user", "content": "hi"}], "user": "\\ud83d"}', "user"),
]


@pytest.mark.parametrize(("body", "field"), SURROGATE_BODIES)
def test_a_lone_surrogate_over_http_is_invalid_request_naming_the_field(
    limited, body, field
):
    response = requests.post(
        limited.url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(field + ": ")
    assert "surrogate" in error["message"]
    assert error["param"] == field


def test_a_lone_surrogate_over_socketio_is_invalid_request_naming_the_field(limited):
    client = sio_from(limited.url, "127.0.17.1")
    try:
        ack = client.chat("s", "hi \ud800 there")
        assert ack["ok"] is False
        assert ack["error"]["code"] == "invalid_request"
        assert ack["error"]["message"].startswith("message: ")
        ack = client.call(
            "chat",
            {"id": "t", "messages": [{"role": "user", "content": "\udfff"}]},
        )
        assert ack["error"]["message"].startswith("messages[0].content: ")
        ack = client.call("chat", {"id": "u", "message": "hi", "model": "\udfff"})
        assert ack["error"]["message"].startswith("model: ")
        # The connection goes on.
        prompt = f"after the surrogates {limited.async_mode}"
        assert client.chat("ok", prompt)["ok"]
        assert client.wait_end("ok")[0] == "done"
        assert client.text("ok") == upstream_text(prompt)
    finally:
        client.close()
    assert "internal" not in json.dumps(client.events)


def test_json_deeper_than_the_parser_goes_is_invalid_request(limited):
    body = b'{"messages":' + b"[" * 5000
    response = requests.post(
        limited.url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("body: ")


def test_a_socketio_packet_deeper_than_the_parser_goes_is_dropped(limited):
    """python-socketio decodes a packet whole before any handler sees it: one too
    deep is dropped as malformed (one short line), and the connection goes on."""
    client = RawSocketIO(limited.url, "127.0.18.1")
    try:
        client.send('420["chat",{"id":"deep","messages":' + "[" * 5000 + "]" * 5000)
        prompt = f"after a deep packet {limited.async_mode}"
        client.send("421" + json.dumps(["chat", {"id": "ok", "message": prompt}]))
        while not client.events("done"):
            client.next_packet()
        assert not any(p.startswith("430") for p in client.packets)
        text = "".join(c["delta"] for c in client.events("chunk") if c["id"] == "ok")
        assert text == upstream_text(prompt)
    finally:
        client.sock.close()
    limited.wait_log("malformed packet dropped (RecursionError")
    assert "Traceback" not in limited.process.log_text()


# -- an upstream's errors --------------------------------------------------------------

INTERNAL = "http://10.9.8.7:8000/internal/v1"
# Set by a test once its client holds the text the model sent before a fault.
TEXT_READ = threading.Event()
SECRET_PATH = "/srv/models/secret-7b"


class ScriptedModel(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that fails as the last message asks: its own
    error texts name an internal URL and path."""

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        text = f"failed at {INTERNAL} reading {SECRET_PATH}"
        if "<<rejected>>" in prompt:
            self._error(400, text, param="temperature")
        elif "<<rejected-anonymously>>" in prompt:
            self._error(422, text)
        elif "<<rate>>" in prompt:
            self._error(429, text, retry_after="7")
        elif "<<overloaded>>" in prompt:
            self._error(503, text, retry_after="100000")
        elif "<<not-json>>" in prompt:
            self._stream([b"<html>bad gateway at " + INTERNAL.encode() + b"</html>"])
        elif "<<not-json-later>>" in prompt:
            self._stream([_chunk("Hello"), b"{not json"])
        elif "<<error-later>>" in prompt:
            # The error comes once the client holds the text before it.
            self._stream([_chunk("Hello")])
            TEXT_READ.wait(10)
            self._stream([json.dumps({"error": {"message": text}})], head=False)
        else:
            self._stream([_chunk("fine"), b"[DONE]"])

    def _error(self, status: int, message: str, **extra: str) -> None:
        error = {"message": message, "type": "x", "param": extra.get("param")}
        data = json.dumps({"error": error}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if "retry_after" in extra:
            self.send_header("Retry-After", extra["retry_after"])
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list, head: bool = True) -> None:
        if head:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
        for event in events:
            data = event if isinstance(event, bytes) else event.encode()
            self.wfile.write(b"data: " + data + b"\n\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


def _chunk(content: str) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
    return json.dumps({"choices": [choice]}).encode()


@pytest.fixture(scope="module")
def scripted(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """A relay in front of ``ScriptedModel``."""
    port = free_port()
    model = ThreadingHTTPServer(("127.0.0.1", port), ScriptedModel)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    env = relay_env(
        upstream,
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        # Every failure here is on purpose: the breaker must not open.
        UPSTREAM_FAILURES_TO_TRIP="1000",
    )
    server = Relay(tmp_session, async_mode, env)
    yield server
    server.quit()
    model.shutdown()


def sio_error(relay: Relay, prompt: str) -> dict[str, Any]:
    client = Recorder(relay.url)
    try:
        assert client.chat("e", prompt)["ok"]
        name, error = client.wait_end("e")
    finally:
        client.close()
    assert name == "error"
    return error


def http_error(relay: Relay, prompt: str) -> requests.Response:
    return requests.post(
        relay.url + "/v1/chat/completions",
        data=chat_body(prompt, stream=True),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def assert_ours(text: str) -> None:
    assert "10.9.8.7" not in text
    assert "/srv/" not in text
    assert "internal" not in text


def test_the_upstreams_own_text_goes_to_the_log_not_to_the_client(scripted):
    error = sio_error(scripted, "<<rejected>>")
    assert error["code"] == "upstream_error"
    # Our words, the status, and the field from the upstream's structured param.
    assert (
        error["message"] == "temperature: the upstream rejected this field (HTTP 400)"
    )
    response = http_error(scripted, "<<rejected-anonymously>>")
    assert response.status_code == 400
    body = response.json()["error"]
    assert body["code"] == "upstream_error"
    assert body["message"] == "the upstream rejected the request (HTTP 422)"
    assert_ours(response.text)
    # The operator reads what the upstream said.
    scripted.wait_log(f"the upstream answered HTTP 422: failed at {INTERNAL}")


def test_the_upstreams_retry_after_is_passed_on_within_bounds(scripted):
    response = http_error(scripted, "<<rate>>")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert_ours(response.text)
    error = sio_error(scripted, "<<rate>>")
    assert (error["code"], error["retry_after"]) == ("upstream_rate_limited", 7)
    response = http_error(scripted, "<<overloaded>>")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "300"
    error = sio_error(scripted, "<<overloaded>>")
    assert (error["code"], error["retry_after"]) == ("upstream_unavailable", 300)
    assert_ours(json.dumps(error))


def test_an_upstream_chunk_that_is_not_json_is_a_502_never_a_400(scripted):
    client = openai.OpenAI(
        base_url=scripted.url + "/v1", api_key="unused", max_retries=0
    )
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "<<not-json>>"}],
            stream=True,
        )
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_bad_response"
    assert_ours(json.dumps(raised.value.body))
    error = sio_error(scripted, "<<not-json-later>>")
    assert error["code"] == "upstream_bad_response"
    assert error["retryable"] is True


def test_an_upstream_fault_mid_stream_is_upstream_unavailable(scripted):
    TEXT_READ.clear()
    stream = openai.OpenAI(
        base_url=scripted.url + "/v1", api_key="unused", max_retries=0
    ).chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "<<error-later>>"}],
        stream=True,
    )
    text = ""
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            if text:
                TEXT_READ.set()
    assert text == "Hello"
    assert raised.value.body["code"] == "upstream_unavailable"
    assert raised.value.body["message"] == "the upstream failed mid-answer"
