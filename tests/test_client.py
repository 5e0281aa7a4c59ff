"""The Python client: the ChatClient library and ``python -m client``, end to end."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

from client import ChatClient, ChatConnectionError, ChatError
from client.chat import _Answer
from tests.conftest import ROOT, UNLIMITED, Relay, free_port

PROMPT = "How do I write a python function that counts words?"
FOLLOW_UP = "And how would I test that function?"
SLOW_DEMO = {
    "LLM_PROVIDER": "demo",
    "DEMO_TTFT": "0.5",
    "DEMO_TOKENS_PER_SECOND": "20",
    **UNLIMITED,
}
# The CLI's default URL comes from CHAT_URL; a developer's must not leak in.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "CHAT_URL"}


@contextmanager
def own_relay(tmp: Path, env: dict[str, str]) -> Iterator[Relay]:
    """A relay for one purpose, shut down quickly (SIGQUIT) when done with."""
    server = Relay(tmp, "eventlet", env)
    try:
        yield server
    finally:
        # Graceful shutdown is the server's own tests' business; skip its wait.
        server.process.proc.send_signal(signal.SIGQUIT)
        server.process.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_session) -> Iterator[Relay]:
    """The demo model at 20 tokens/s: an answer lasts seconds, long enough to stop."""
    with own_relay(tmp_session, SLOW_DEMO) as server:
        yield server


@cache
def answers(url: str, *prompts: str) -> tuple[str, ...]:
    """What a fresh conversation gets for ``prompts``, one turn each.

    Cached: the demo model answers a given conversation the same way every time.
    """
    with ChatClient(url) as chat:
        return tuple(chat.ask(prompt) for prompt in prompts)


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def run_cli(*args: str, stdin: str = "", timeout: float = 30):
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        env=CLI_ENV,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_no_live_streams(server: Relay, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while server.health()["live_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["live_streams"] == 0


# The library


def test_stream_yields_the_same_text_as_ask(demo_server):
    with ChatClient(demo_server.url) as chat:
        deltas = list(chat.stream(PROMPT))
    assert len(deltas) > 1
    assert all(deltas)
    assert "".join(deltas) == answers(demo_server.url, PROMPT)[0]


def test_done_payload_is_kept_as_last_result(demo_server):
    with ChatClient(demo_server.url) as chat:
        chat.ask(PROMPT)
        result = chat.last_result
    assert result["finish_reason"] == "stop"
    assert result["model"] == "demo"
    assert result["usage"]["completion_tokens"] > 0
    assert result["timing"]["ttft_ms"] is not None


def test_history_grows_by_two_turns_per_exchange(demo_server):
    with ChatClient(demo_server.url) as chat:
        first = chat.ask(PROMPT)
        assert chat.history == [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": first},
        ]
        second = chat.ask(FOLLOW_UP)
        assert len(chat.history) == 4
        assert chat.history[2:] == [
            {"role": "user", "content": FOLLOW_UP},
            {"role": "assistant", "content": second},
        ]


def test_second_turn_sends_the_whole_history(demo_server):
    # The demo model's answer depends on the whole conversation.
    in_conversation = answers(demo_server.url, PROMPT, FOLLOW_UP)[1]
    alone = answers(demo_server.url, FOLLOW_UP)[0]
    assert in_conversation != alone
    assert "turn 2" in in_conversation


def test_reset_starts_a_new_conversation(demo_server):
    with ChatClient(demo_server.url) as chat:
        chat.ask(PROMPT)
        chat.reset()
        assert chat.history == []
        assert chat.last_result is None
        assert chat.ask(FOLLOW_UP) == answers(demo_server.url, FOLLOW_UP)[0]


def test_options_and_model_are_sent(demo_server):
    with ChatClient(demo_server.url, model="demo", options={"max_tokens": 3}) as chat:
        deltas = list(chat.stream(PROMPT, options={"temperature": 0.5}))
        assert chat.last_result["finish_reason"] == "length"
    assert len(deltas) == 3


def test_on_event_sees_the_ack_every_chunk_and_the_done(demo_server):
    events = []
    with ChatClient(demo_server.url, on_event=lambda *event: events.append(event)) as c:
        text = c.ask(PROMPT)
    names = [name for name, _ in events]
    assert names.count("ack") == 1
    assert names[-1] == "done"
    ack = next(data for name, data in events if name == "ack")
    assert ack["ok"] is True
    assert {data["id"] for _, data in events} == {ack["id"]}
    chunks = [data for name, data in events if name == "chunk"]
    assert [chunk["seq"] for chunk in chunks] == list(range(len(chunks)))
    assert "".join(chunk["delta"] for chunk in chunks) == text


def test_break_cancels_the_request(slow_server):
    with ChatClient(slow_server.url) as chat:
        started = time.monotonic()
        deltas = []
        for delta in chat.stream(PROMPT):
            deltas.append(delta)
            break
        assert time.monotonic() - started < 3
        assert chat.last_result["finish_reason"] == "cancelled"
        assert chat.history[0] == {"role": "user", "content": PROMPT}
        assert chat.history[1]["content"].startswith(deltas[0])
        wait_no_live_streams(slow_server)
        # The connection's slot is free again for the next request.
        assert list(chat.stream(FOLLOW_UP, options={"max_tokens": 2}))


def test_stop_from_another_thread_ends_with_cancelled(slow_server, demo_server):
    full = answers(demo_server.url, PROMPT)[0]
    with ChatClient(slow_server.url) as chat:
        deltas = []
        started = time.monotonic()
        for delta in chat.stream(PROMPT):
            deltas.append(delta)
            if len(deltas) == 2:
                threading.Thread(target=chat.stop).start()
        assert time.monotonic() - started < 3
        assert chat.last_result["finish_reason"] == "cancelled"
    text = "".join(deltas)
    assert full.startswith(text)
    assert len(text) < len(full)
    assert chat.history[-1] == {"role": "assistant", "content": text}


def test_stop_before_any_text_leaves_no_empty_turn(slow_server):
    def on_event(name: str, data: dict) -> None:
        if name == "ack":
            chat.stop()  # well before the first token (DEMO_TTFT is 0.5 s)

    with ChatClient(slow_server.url, on_event=on_event) as chat:
        assert chat.ask(PROMPT) == ""
        assert chat.last_result["finish_reason"] == "cancelled"
        assert chat.last_result["timing"]["ttft_ms"] is None
        assert chat.history == []
        chat.on_event = None
        assert chat.ask(FOLLOW_UP, options={"max_tokens": 2})


@pytest.mark.parametrize(
    "fields",
    [
        {"options": {"max_tokens": -1}},
        {"options": {"temperature": 9}},
        {"model": "no-such-model"},
    ],
)
def test_invalid_request_raises_and_leaves_history_unchanged(demo_server, fields):
    with ChatClient(demo_server.url) as chat:
        chat.ask(PROMPT, options={"max_tokens": 3})
        before = [dict(turn) for turn in chat.history]
        with pytest.raises(ChatError) as caught:
            chat.ask(FOLLOW_UP, **fields)
        assert caught.value.code == "invalid_request"
        assert caught.value.retryable is False
        assert chat.history == before
        # The client is still usable.
        assert chat.ask(FOLLOW_UP, options={"max_tokens": 3})


def test_closed_port_raises_promptly():
    chat = ChatClient(closed_url(), timeout=10)
    started = time.monotonic()
    with pytest.raises(ChatConnectionError) as caught:
        chat.connect()
    assert time.monotonic() - started < 2
    assert caught.value.code == "connection_failed"
    assert isinstance(caught.value, ChatError)
    assert isinstance(caught.value, ConnectionError)
    assert "refused" in caught.value.message.lower()


def test_server_that_wants_a_token_refuses_a_client_without_one(tmp_session):
    env = {"LLM_PROVIDER": "demo", "AUTH_TOKENS": "letmein", "DEMO_TTFT": "0"}
    with own_relay(tmp_session, env) as server:
        with pytest.raises(ChatConnectionError) as caught:
            ChatClient(server.url).connect()
        assert caught.value.code == "unauthorized"
        assert "token" in caught.value.message
        with ChatClient(server.url, token="letmein") as chat:
            assert chat.ask(PROMPT, options={"max_tokens": 2})
        result = run_cli("--url", server.url, PROMPT)
        assert result.returncode == 3
        assert result.stderr.startswith("error: unauthorized: ")


def test_stream_before_connect_raises_and_keeps_history():
    chat = ChatClient(closed_url())
    with pytest.raises(ChatConnectionError):
        chat.ask(PROMPT)
    assert chat.history == []


def test_clients_in_one_process_do_not_interfere(demo_server):
    prompts = [f"Tell me about topic number {n} and its lists" for n in range(4)]
    expected = {prompt: answers(demo_server.url, prompt)[0] for prompt in prompts}
    got: dict[str, str] = {}

    def converse(prompt: str) -> None:
        with ChatClient(demo_server.url) as chat:
            got[prompt] = chat.ask(prompt)

    threads = [threading.Thread(target=converse, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert got == expected


def test_dropped_connection_raises_disconnected(tmp_session):
    with own_relay(tmp_session, SLOW_DEMO) as server, ChatClient(server.url) as chat:
        with pytest.raises(ChatError) as caught:
            for _ in chat.stream(PROMPT):
                # SIGQUIT: gunicorn's quick shutdown, which drops every connection.
                server.process.proc.send_signal(signal.SIGQUIT)
        assert caught.value.code == "disconnected"
        assert caught.value.retryable is True
        assert chat.history == []


def test_out_of_order_and_repeated_chunks_come_out_in_seq_order():
    answer = _Answer()
    out = []
    for seq, delta in [(1, "b"), (0, "a"), (0, "a"), (3, "d"), (2, "c"), (1, "b")]:
        out += answer.feed("chunk", {"id": "x", "seq": seq, "delta": delta})
    assert out == ["a", "b", "c", "d"]
    assert answer.feed("done", {"id": "x", "finish_reason": "stop"}) == []
    assert answer.text == "abcd"


# The command line


def test_cli_prints_the_answer_the_library_gets(demo_server):
    result = run_cli("--url", demo_server.url, PROMPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == answers(demo_server.url, PROMPT)[0] + "\n"
    assert result.stderr == ""


def test_cli_reads_the_prompt_from_stdin(demo_server):
    result = run_cli("--url", demo_server.url, stdin=PROMPT + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == answers(demo_server.url, PROMPT)[0] + "\n"


def test_cli_interactive_keeps_the_conversation(demo_server):
    first, second = answers(demo_server.url, PROMPT, FOLLOW_UP)
    script = f"{PROMPT}\n{FOLLOW_UP}\n/reset\n{PROMPT}\n"
    result = run_cli("-i", "--url", demo_server.url, stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{first}\n{second}\n{first}\n"


def test_cli_json_prints_every_event(demo_server):
    result = run_cli("--json", "--url", demo_server.url, PROMPT)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    names = [event["event"] for event in events]
    assert names[-1] == "done"
    assert names.count("ack") == 1
    assert events[-1]["data"]["finish_reason"] == "stop"
    chunks = sorted(
        (event["data"] for event in events if event["event"] == "chunk"),
        key=lambda chunk: chunk["seq"],
    )
    text = "".join(chunk["delta"] for chunk in chunks)
    assert text == answers(demo_server.url, PROMPT)[0]


def test_cli_stats_go_to_stderr(demo_server):
    result = run_cli("--stats", "--url", demo_server.url, PROMPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == answers(demo_server.url, PROMPT)[0] + "\n"
    for field in ("model: demo", "finish: stop", "ttft: ", "tokens/s", "usage: "):
        assert field in result.stderr


def test_cli_rejected_request_exits_1(demo_server):
    result = run_cli("--max-tokens", "0", "--url", demo_server.url, PROMPT)
    assert result.returncode == 1
    assert result.stderr.startswith("error: invalid_request: options.max_tokens")
    assert result.stdout == ""


def test_cli_json_shows_both_the_error_and_the_negative_ack(demo_server):
    result = run_cli("--json", "--max-tokens", "0", "--url", demo_server.url, PROMPT)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    events = {event["event"]: event["data"] for event in map(json.loads, lines)}
    assert events["error"]["code"] == "invalid_request"
    assert events["ack"]["ok"] is False
    assert events["ack"]["error"]["code"] == "invalid_request"


def test_cli_unreachable_server_exits_3():
    started = time.monotonic()
    result = run_cli("--url", closed_url(), PROMPT)
    assert time.monotonic() - started < 10
    assert result.returncode == 3
    assert result.stderr.startswith("error: connection_failed: ")


@pytest.mark.parametrize(
    "args", [["--temperature", "warm", "hi"], ["--url", "localhost", "hi"], [""]]
)
def test_cli_usage_error_exits_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_cli_ctrl_c_stops_the_answer(slow_server, demo_server):
    full = answers(demo_server.url, PROMPT)[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", "--url", slow_server.url, PROMPT],
        cwd=ROOT,
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = proc.stdout.read(1)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 3
    assert proc.returncode in (0, 130)
    output = (first + rest).decode()
    if proc.returncode == 130:
        assert "[stopped]" in err.decode()
        assert output.endswith("\n")
        assert full.startswith(output[:-1])
        assert len(output) < len(full)
    else:
        assert output == full + "\n"
    wait_no_live_streams(slow_server)


def test_cli_ctrl_c_at_the_prompt_exits_130(demo_server):
    answer = answers(demo_server.url, PROMPT)[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", "-i", "--url", demo_server.url],
        cwd=ROOT,
        env=CLI_ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(f"{PROMPT}\n".encode())
    proc.stdin.flush()
    expected = f"{answer}\n".encode()
    # The whole answer is out: the CLI is back at the prompt, waiting for a line.
    assert proc.stdout.read(len(expected)) == expected
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    proc.stdin.close()
    assert proc.returncode == 130
