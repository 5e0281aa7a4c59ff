"""The relay as users run it: gunicorn processes in both async modes, the real openai
package streaming from the OpenAI-compatible test server, real Socket.IO clients."""

import select
import socket
import threading
import time

import pytest

from app import tokens

from .conftest import (
    UPSTREAM_KEY,
    Recorder,
    Relay,
    relay_env,
    upstream_text,
)


def answer(client: Recorder, request_id: str, prompt: str, **fields):
    """Send one chat and wait for its end: (terminal event name, payload)."""
    ack = client.chat(request_id, prompt, **fields)
    assert ack["ok"], ack
    return client.wait_end(request_id)


def assert_contiguous(client: Recorder, request_id: str) -> None:
    seqs = [chunk["seq"] for chunk in client.chunks(request_id)]
    assert seqs == list(range(len(seqs)))


def test_concurrent_clients_each_receive_only_their_own_answer(relay, connect):
    prompts = [f"Question {n}: tell me about topic-{n} and its uses" for n in range(24)]
    lone = connect()
    expected = {}
    for n, prompt in enumerate(prompts):
        assert answer(lone, f"lone-{n}", prompt)[0] == "done"
        expected[n] = lone.text(f"lone-{n}")
    assert len(set(expected.values())) == len(prompts)

    clients = [connect() for _ in prompts]
    start = threading.Barrier(len(clients))

    def ask(n: int) -> None:
        start.wait()
        clients[n].chat(f"req-{n}", prompts[n])

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for n, client in enumerate(clients):
        name, done = client.wait_end(f"req-{n}")
        assert name == "done"
        assert done["finish_reason"] == "stop"
        assert {data["id"] for _, data in client.events} == {f"req-{n}"}
        assert_contiguous(client, f"req-{n}")
        assert client.text(f"req-{n}") == expected[n]
        assert all(chunk["delta"] for chunk in client.chunks(f"req-{n}"))
        assert [name for name, _ in client.events].count("done") == 1


def test_upstream_receives_system_prompt_model_and_usage_request(
    relay, connect, upstream
):
    client = connect()
    marker = f"upstream-shape-{relay.async_mode}"
    name, done = answer(
        client, "a", marker, model="other-model", options={"temperature": 0.5}
    )
    assert name == "done"
    record = upstream.find(marker)
    assert record["model"] == "other-model"
    assert record["messages"] == [
        {"role": "system", "content": "You are a test assistant."},
        {"role": "user", "content": marker},
    ]
    assert record["stream_options"] == {"include_usage": True}
    assert record["temperature"] == 0.5
    assert record["authorization_present"] is True
    assert done["model"] == "other-model"
    assert done["usage"]["estimated"] is False
    # The test server counts one token per word it sent.
    assert done["usage"]["completion_tokens"] == 30
    assert client.text("a") == upstream_text(marker)


def test_stop_closes_upstream_stream(relay, connect, upstream):
    client = connect()
    # 50 s of answer: only the stop can end its upstream stream within the test.
    marker = f"stop-me-{relay.async_mode} [[tokens:2000]] [[tps:40]]"
    assert client.chat("s", marker)["ok"]
    client.wait(lambda c: len(c.chunks("s")) >= 3)
    assert client.call("stop", {"id": "s"}) == {"ok": True, "id": "s"}
    name, done = client.wait_end("s")
    assert name == "done"
    assert done["finish_reason"] == "cancelled"
    assert done["usage"]["estimated"] is True
    assert done["usage"]["completion_tokens"] == tokens.count_text(client.text("s"))
    # The relay closed the upstream stream (the client is still connected) long
    # before the model would have finished.
    record = upstream.wait_outcome(marker, timeout=30)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < 2000
    # Nothing follows the terminal event: the generation is over (its upstream
    # stream closed), and the connection's next answer comes after anything it
    # could still have sent.
    received = len(client.of("s"))
    assert answer(client, "next", "and now? [[tokens:3]]")[0] == "done"
    assert len(client.of("s")) == received


def test_disconnect_closes_upstream_stream_when_grace_window_ends(relay, upstream):
    client = Recorder(relay.url)
    # 50 s of answer: only the end of the grace window can end it within the test.
    marker = f"leave-me-{relay.async_mode} [[tokens:2000]] [[tps:40]]"
    assert client.chat("d", marker)["ok"]
    client.wait(lambda c: len(c.chunks("d")) >= 3)
    left_at = time.time()
    client.close()
    record = upstream.wait_outcome(marker, timeout=30)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < 2000
    # The relay fixture's resume window is 2 s: the stream ran on through it (the
    # test server's clock is this one; a busy machine can only make this later).
    assert record["ended_at"] - left_at >= 2.0


UPSTREAM_FAULTS = [
    ("[[status:401]]", "upstream_auth", False),
    ("[[status:403]]", "upstream_auth", False),
    ("[[status:404]]", "upstream_not_found", False),
    ("[[status:429]]", "upstream_rate_limited", True),
    ("[[status:500]]", "upstream_unavailable", True),
    ("[[status:502]]", "upstream_unavailable", True),
    ("[[status:503]]", "upstream_unavailable", True),
    ("[[status:400]]", "upstream_error", False),
    # An error object mid-stream is the upstream's fault, not the request's.
    ("[[error_after:3]]", "upstream_unavailable", True),
    ("[[close_after:3]]", "upstream_unavailable", True),
    ("[[stall_after:2]]", "upstream_timeout", True),
]


@pytest.mark.parametrize(("directive", "code", "retryable"), UPSTREAM_FAULTS)
def test_upstream_fault_maps_to_its_error_code(
    relay, connect, directive, code, retryable
):
    client = connect()
    name, error = answer(client, "f", f"fault {directive}")
    assert name == "error"
    assert error["code"] == code
    assert error["retryable"] is retryable
    assert error["message"]
    assert UPSTREAM_KEY not in error["message"]
    assert "sk-" not in error["message"]
    # The upstream's own words ("Injected error: …") stay in the server's log.
    assert "Injected" not in error["message"]
    assert [n for n, _ in client.of("f")].count("error") == 1
    if "_after:" in directive:
        count = int(directive.split(":")[1].rstrip("]"))
        assert client.text("f") == upstream_text(f"fault {directive}", first=count)
        assert_contiguous(client, "f")
    # The connection stays usable after a failed request.
    assert answer(client, "next", "still working?")[0] == "done"


def test_api_key_never_reaches_the_log(relay, connect):
    client = connect()
    answer(client, "k", "leak check [[status:401]]")
    answer(client, "k2", "leak check [[status:400]]")
    assert UPSTREAM_KEY not in relay.process.log_text()
    assert all(UPSTREAM_KEY not in repr(data) for _, data in client.events)


QUIRKS = [
    "[[null_choices]]",
    "[[empty_choices]]",
    "[[keepalive]]",
    "[[empty_deltas]]",
    "[[usage_in_choice]]",
    "[[null_choices]] [[empty_choices]] [[keepalive]] [[empty_deltas]]",
]


@pytest.mark.parametrize("quirk", QUIRKS)
def test_quirky_stream_shapes_give_the_same_answer(relay, connect, quirk):
    client = connect()
    prompt = "Quirks: what is a river delta?"
    assert answer(client, "plain", prompt)[0] == "done"
    name, done = answer(client, "quirky", f"{prompt} {quirk}")
    assert name == "done"
    assert client.text("quirky") == client.text("plain")
    assert all(chunk["delta"] for chunk in client.chunks("quirky"))
    assert_contiguous(client, "quirky")
    assert done["usage"]["estimated"] is False
    plain_usage = client.terminal("plain")[1]["usage"]
    assert done["usage"]["completion_tokens"] == plain_usage["completion_tokens"]


def test_usage_is_estimated_when_upstream_sends_none(relay, connect):
    client = connect()
    name, done = answer(client, "n", "count me [[no_usage]]")
    assert name == "done"
    usage = done["usage"]
    assert usage["estimated"] is True
    assert usage["completion_tokens"] == tokens.count_text(client.text("n"))
    system_and_user = [
        {"role": "system", "content": "You are a test assistant."},
        {"role": "user", "content": "count me [[no_usage]]"},
    ]
    assert usage["prompt_tokens"] == tokens.count_messages(system_and_user)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize(
    ("prompt", "options", "finish_reason"),
    [
        ("cut short", {"max_tokens": 5}, "length"),
        ("filtered [[finish:content_filter]]", {}, "content_filter"),
        ("tools [[finish:tool_calls]]", {}, "tool_calls"),
    ],
)
def test_finish_reason_is_passed_on(relay, connect, prompt, options, finish_reason):
    client = connect()
    name, done = answer(client, "r", prompt, options=options)
    assert name == "done"
    assert done["finish_reason"] == finish_reason
    if options:
        assert client.text("r") == upstream_text(prompt, first=5)


def test_stalled_upstream_does_not_delay_other_clients(relay, connect):
    stalled, others = connect(), [connect() for _ in range(3)]
    assert stalled.chat("stall", "hold on [[stall_after:1]]")["ok"]
    stalled.wait(lambda c: len(c.chunks("stall")) == 1)
    for n, client in enumerate(others):
        assert client.chat(f"o{n}", f"meanwhile {n}")["ok"]
    for n, client in enumerate(others):
        assert client.wait_end(f"o{n}")[0] == "done"
    # Every other answer was complete while the stalled one was still waiting.
    assert stalled.terminal("stall") is None
    assert stalled.wait_end("stall")[1]["code"] == "upstream_timeout"


@pytest.fixture(scope="module")
def unreachable(async_mode, tmp_session, upstream):
    """A relay whose upstream port has no listener."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(upstream, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1"),
    )
    yield server
    server.process.stop()


def test_unreachable_upstream_is_unavailable(unreachable):
    client = Recorder(unreachable.url)
    name, error = answer(client, "u", "anyone there?")
    client.close()
    assert name == "error"
    assert error["code"] == "upstream_unavailable"
    assert error["retryable"] is True


@pytest.fixture(scope="module")
def blackhole():
    """A loopback port whose accept queue is full, so new connects never complete."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    # The queue is full once a filler's handshake completed (it turns writable);
    # the kernel drops the SYNs of the others, and of every connect after them.
    _, writable, _ = select.select([], fillers, [], 10)
    assert any(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in writable)
    yield listener.getsockname()[1]
    for sock in [*fillers, listener]:
        sock.close()


def test_upstream_connect_timeout_is_reported(
    async_mode, blackhole, tmp_session, upstream
):
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(
            upstream,
            OPENAI_BASE_URL=f"http://127.0.0.1:{blackhole}/v1",
            UPSTREAM_CONNECT_TIMEOUT="0.5",
        ),
    )
    client = Recorder(server.url)
    try:
        name, error = answer(client, "t", "hello?")
    finally:
        client.close()
        server.process.stop()
    assert name == "error"
    assert error["code"] == "upstream_timeout"
    assert error["retryable"] is True


def test_events_named_connect_or_disconnect_leave_the_connection_working(connect):
    # python-socketio hands a client's own "disconnect" event to the server's
    # disconnect handler; the connection is still open and must get its answers.
    client = connect()
    client.sio.emit("connect", {"token": "x"})
    client.sio.emit("disconnect", {"id": 1})
    prompt = "still connected? [[tokens:12]]"
    assert answer(client, "c", prompt)[0] == "done"
    assert client.text("c") == upstream_text(prompt, 12)


def test_stop_closes_a_silent_upstream_at_once(tmp_session, upstream, async_mode):
    # The upstream stalls after two chunks and would hold the stream open until the
    # relay's read timeout (a minute here); the stop must close it now.
    relay = Relay(
        tmp_session, async_mode, relay_env(upstream, UPSTREAM_READ_TIMEOUT="60")
    )
    client = Recorder(relay.url)
    try:
        marker = f"silent-{async_mode} [[stall_after:2]]"
        assert client.chat("q", marker)["ok"]
        client.wait(lambda c: len(c.chunks("q")) == 2)
        assert client.call("stop", {"id": "q"}) == {"ok": True, "id": "q"}
        assert client.wait_end("q")[1]["finish_reason"] == "cancelled"
        record = upstream.wait_outcome(marker, timeout=20)
        assert record["outcome"] == "client_closed"
        assert client.text("q") == upstream_text(marker, first=2)
    finally:
        client.close()
        relay.process.stop()
