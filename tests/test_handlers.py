"""The event handlers, in process, through Flask-SocketIO's test client."""

import json
import os
import subprocess
import sys
import time

import pytest

from app import create_app, socketio
from app.providers.demo import compose, split_tokens

DEMO = {
    "ASYNC_MODE": "threading",
    "LLM_PROVIDER": "demo",
    "DEMO_TTFT": 0.0,
    "DEMO_TOKENS_PER_SECOND": 0.0,
    # Frames are counted below; coalescing has a test of its own.
    "COALESCE_WINDOW_MS": 0,
}


@pytest.fixture
def app():
    """The app on an unpaced demo model."""
    return create_app({**DEMO, "TESTING": True})


@pytest.fixture
def client(app):
    """A Socket.IO test client connected to the app."""
    test_client = socketio.test_client(app)
    yield test_client
    if test_client.is_connected():
        test_client.disconnect()


class Events:
    """What a test client has received so far, kept across reads."""

    def __init__(self, client):
        self.client = client
        self.received: list[tuple[str, dict]] = []

    def drain(self) -> None:
        for event in self.client.get_received():
            self.received.append((event["name"], event["args"][0]))

    def until_end(self, request_id: str, timeout: float = 15) -> tuple[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            for name, data in self.received:
                if name in ("done", "error") and data.get("id") == request_id:
                    return name, data
            time.sleep(0.01)
        raise AssertionError(f"no terminal event for {request_id}: {self.received}")

    def until(self, predicate, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received: {self.received[-5:]}")
            time.sleep(0.01)
            self.drain()

    def chunks(self, request_id: str) -> list[dict]:
        return [d for n, d in self.received if n == "chunk" and d["id"] == request_id]


def test_overrides_set_the_limits_the_handlers_enforce():
    # A first token a minute away: the first chat stays live throughout.
    limits = {"DEMO_TTFT": 60.0, "MAX_MESSAGES": 2, "MAX_CONCURRENT_PER_CONNECTION": 1}
    client = socketio.test_client(create_app({**DEMO, **limits}))
    assert socketio.server.eio.async_mode == "threading"
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    ack = client.emit("chat", {"id": "long", "messages": turns}, callback=True)
    assert ack["error"]["code"] == "invalid_request"
    assert "at most 2 messages" in ack["error"]["message"]
    assert client.emit("chat", {"id": "a", "message": "hi"}, callback=True)["ok"]
    ack = client.emit("chat", {"id": "b", "message": "hi"}, callback=True)
    assert ack["error"]["code"] == "busy"
    client.disconnect()


def test_config_is_read_from_the_environment():
    # Config reads the environment once, at import: a process of its own.
    show = (
        "import json; from app import create_app; c = create_app().config; "
        "print(json.dumps([c[k] for k in ('MAX_MESSAGES', 'COALESCE_WINDOW_MS')]))"
    )
    env = {**os.environ, "LLM_PROVIDER": "demo", "ASYNC_MODE": "threading"}
    env.update(MAX_MESSAGES="7", COALESCE_WINDOW_MS="25")
    shown = subprocess.run(
        [sys.executable, "-c", show], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.splitlines()[-1]) == [7, 25.0]


def test_healthz_answers_ok(app):
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_chat_streams_the_answer_then_done(client):
    events = Events(client)
    ack = client.emit(
        "chat", {"id": "r1", "message": "Tell me about gardens"}, callback=True
    )
    token = ack.pop("resume_token")
    assert ack == {"ok": True, "id": "r1", "model": "demo"}
    assert isinstance(token, str) and len(token) >= 32
    name, done = events.until_end("r1")
    assert name == "done"
    chunks = events.chunks("r1")
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert all(c["delta"] for c in chunks)
    expected = compose([{"role": "user", "content": "Tell me about gardens"}])
    assert "".join(c["delta"] for c in chunks) == expected
    assert done["finish_reason"] == "stop"
    assert done["chunks"] == len(chunks)
    assert done["model"] == "demo"
    assert done["usage"]["estimated"] is False
    assert done["usage"]["total_tokens"] == (
        done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
    )
    assert done["timing"]["ttft_ms"] <= done["timing"]["total_ms"]


def test_max_tokens_truncates_with_finish_length(client):
    events = Events(client)
    client.emit("chat", {"id": "r", "message": "hi", "options": {"max_tokens": 5}})
    name, done = events.until_end("r")
    assert name == "done"
    assert done["finish_reason"] == "length"
    assert len(events.chunks("r")) == 5


BAD_CHATS = [
    ("not a dict", "payload"),
    ({"message": "hi"}, "id"),
    ({"id": 7, "message": "hi"}, "id"),
    ({"id": "x" * 65, "message": "hi"}, "id"),
    ({"id": "a"}, "messages"),
    ({"id": "a", "messages": []}, "messages"),
    ({"id": "a", "messages": "hi"}, "messages"),
    ({"id": "a", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"id": "a", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    (
        {"id": "a", "messages": [{"role": "system", "content": "x"}]},
        "messages[0].role: the last message must be the user's or a tool result",
    ),
    ({"id": "a", "messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    (
        {"id": "a", "messages": [{"role": "user", "content": "x", "reasoning": "y"}]},
        "messages[0].reasoning: is not a message field",
    ),
    ({"id": "a", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"id": "a", "messages": [{"role": "assistant", "content": "x"}]}, "last"),
    ({"id": "a", "message": "   "}, "messages[0].content"),
    (
        {
            "id": "a",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": ""},
            ],
        },
        "messages[2].content",
    ),
    ({"id": "a", "message": "x" * 10001}, "limit is 10000"),
    ({"id": "a", "messages": [{"role": "user", "content": "x"}] * 101}, "at most 100"),
    ({"id": "a", "message": "hi", "model": "gpt-5"}, "model"),
    ({"id": "a", "message": "hi", "options": {"temperature": 3}}, "temperature"),
    ({"id": "a", "message": "hi", "options": {"temperature": "hot"}}, "temperature"),
    ({"id": "a", "message": "hi", "options": {"max_tokens": 10**6}}, "max_tokens"),
    ({"id": "a", "message": "hi", "options": {"max_tokens": True}}, "max_tokens"),
    ({"id": "a", "message": "hi", "options": {"stream": False}}, "options.stream"),
    ({"id": "a", "message": "hi", "options": {"n": 2}}, "options.n"),
    ({"id": "a", "message": "hi", "options": []}, "options"),
    # A lone surrogate is no text: it could go neither upstream nor to a tokenizer.
    ({"id": "a", "message": "hi \ud800"}, "message: holds a lone UTF-16 surrogate"),
    ({"id": "a", "message": "hi", "model": "\udfff"}, "model: holds a lone"),
    (
        {"id": "a", "messages": [{"role": "user", "content": "x\udc00"}]},
        "messages[0].content: holds a lone",
    ),
]


@pytest.mark.parametrize(("payload", "named"), BAD_CHATS)
def test_bad_chat_is_rejected_naming_the_field(client, payload, named):
    ack = client.emit("chat", payload, callback=True)
    assert ack["ok"] is False
    assert ack["error"]["code"] == "invalid_request"
    assert named in ack["error"]["message"]
    errors = [e for e in client.get_received() if e["name"] == "error"]
    assert len(errors) == 1
    assert errors[0]["args"][0]["code"] == "invalid_request"
    assert errors[0]["args"][0]["retryable"] is False
    # The connection stays usable.
    events = Events(client)
    assert client.emit("chat", {"id": "ok", "message": "still there?"}, callback=True)[
        "ok"
    ]
    assert events.until_end("ok")[0] == "done"


def test_chat_without_payload_is_rejected(client):
    ack = client.emit("chat", callback=True)
    assert ack["error"]["code"] == "invalid_request"


def test_duplicate_live_id_is_rejected(app):
    slow = create_app({**DEMO, "DEMO_TTFT": 60.0})  # live throughout the test
    client = socketio.test_client(slow)
    assert client.emit("chat", {"id": "same", "message": "one"}, callback=True)["ok"]
    ack = client.emit("chat", {"id": "same", "message": "two"}, callback=True)
    assert ack["error"]["code"] == "invalid_request"
    assert "already live" in ack["error"]["message"]
    client.disconnect()


def test_fourth_concurrent_chat_is_busy():
    slow = create_app({**DEMO, "DEMO_TTFT": 60.0})  # live throughout the test
    client = socketio.test_client(slow)
    for n in range(3):
        assert client.emit("chat", {"id": f"r{n}", "message": "hi"}, callback=True)[
            "ok"
        ]
    ack = client.emit("chat", {"id": "r3", "message": "hi"}, callback=True)
    assert ack["error"]["code"] == "busy"
    busy = [e["args"][0] for e in client.get_received() if e["name"] == "error"]
    assert busy == [
        {
            "id": "r3",
            "code": "busy",
            "message": ack["error"]["message"],
            "retryable": True,
        }
    ]
    client.disconnect()


def test_stop_ends_with_cancelled_and_partial_usage():
    slow = create_app({**DEMO, "DEMO_TTFT": 0.0, "DEMO_TOKENS_PER_SECOND": 50.0})
    client = socketio.test_client(slow)
    events = Events(client)
    client.emit("chat", {"id": "s", "message": "Write a long story about rivers"})
    events.until(lambda e: len(e.chunks("s")) >= 3)
    assert client.emit("stop", {"id": "s"}, callback=True) == {"ok": True, "id": "s"}
    name, done = events.until_end("s")
    assert name == "done"
    assert done["finish_reason"] == "cancelled"
    assert done["usage"]["estimated"] is True
    assert done["usage"]["completion_tokens"] > 0
    sent = len(events.chunks("s"))
    assert done["chunks"] == sent
    # Nothing follows the terminal event: the connection's next answer, five token
    # intervals long, comes after anything the stopped one could still have sent.
    client.emit("chat", {"id": "n", "message": "next", "options": {"max_tokens": 5}})
    assert events.until_end("n")[0] == "done"
    assert len(events.chunks("s")) == sent
    client.disconnect()


def test_stop_for_unknown_id_is_rejected(client):
    ack = client.emit("stop", {"id": "nope"}, callback=True)
    assert ack["error"]["code"] == "unknown_id"
    assert "nope" in ack["error"]["message"]


@pytest.mark.parametrize("payload", [None, "x", {"id": 3}, {}])
def test_bad_stop_is_rejected(client, payload):
    ack = client.emit("stop", payload, callback=True)
    assert ack["error"]["code"] == "invalid_request"


def test_second_client_receives_nothing(app):
    first = socketio.test_client(app)
    second = socketio.test_client(app)
    events = Events(first)
    first.emit("chat", {"id": "mine", "message": "private question"})
    assert events.until_end("mine")[0] == "done"
    assert second.get_received() == []
    first.disconnect()
    second.disconnect()


def test_metrics_count_requests_chunks_and_outcomes(app, client):
    events = Events(client)
    client.emit(
        "chat", {"id": "m", "message": "count this", "options": {"max_tokens": 7}}
    )
    events.until_end("m")
    client.emit("stop", {"id": "gone"})
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'chat_requests_total{transport="socketio"} 1.0' in text
    assert "chat_chunks_sent_total 7.0" in text
    assert 'chat_finished_total{finish_reason="length"} 1.0' in text
    assert "chat_connections 1.0" in text
    assert 'chat_active_streams{transport="socketio"} 0.0' in text
    assert "chat_ttft_seconds_count 1.0" in text


def test_empty_assistant_turn_is_accepted(client):
    """An answer stopped before its first token leaves an empty assistant turn."""
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
    ]
    ack = client.emit("chat", {"id": "e", "messages": turns}, callback=True)
    assert ack["ok"] is True


def coalescing_app(window_ms: float):
    """A demo app at 400 tokens/s (a token every 2.5 ms) with this coalescing window."""
    return create_app(
        {**DEMO, "DEMO_TOKENS_PER_SECOND": 400.0, "COALESCE_WINDOW_MS": window_ms}
    )


def stream_events(app, request_id: str, prompt: str) -> list[dict]:
    client = socketio.test_client(app)
    events = Events(client)
    client.emit("chat", {"id": request_id, "message": prompt})
    name, done = events.until_end(request_id)
    assert name == "done"
    client.disconnect()
    chunks = events.chunks(request_id)
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert done["chunks"] == len(chunks)
    return chunks, done


def metrics_text(app) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def test_coalescing_sends_one_event_per_window_with_the_exact_text():
    app = coalescing_app(50)
    prompt = "Explain coalescing with a table and python code"
    chunks, done = stream_events(app, "c", prompt)
    tokens = split_tokens(compose([{"role": "user", "content": prompt}]))
    assert "".join(c["delta"] for c in chunks) == "".join(tokens)
    # At most one event per 50 ms window over the stream's own duration, the first
    # one included; at 400 tokens/s that is about 20 tokens an event.
    windows = done["timing"]["total_ms"] / 50
    assert len(chunks) <= windows + 2
    assert len(chunks) < len(tokens) / 5
    assert "chat_coalesced_frames_total 0.0" not in metrics_text(app)


def test_no_window_sends_one_event_per_token():
    app = coalescing_app(0)
    prompt = "Tell me about lighthouses"
    chunks, done = stream_events(app, "i", prompt)
    tokens = split_tokens(compose([{"role": "user", "content": prompt}]))
    assert [c["delta"] for c in chunks] == tokens
    text = metrics_text(app)
    assert "chat_coalesced_frames_total 0.0" in text
    assert f"chat_chunks_sent_total {float(len(chunks))}" in text
