"""The Python client: the ChatClient library and ``python -m client``, end to end,
and their handling of reasoning against a scripted server."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

from app.providers.demo import compose, split_tokens
from client import ChatClient, ChatConnectionError, ChatError, Delta, cli
from client.answer import Answer
from tests.conftest import (
    DEFAULT_ASYNC_MODE,
    ROOT,
    SYSTEM_PROMPT,
    UNLIMITED,
    Relay,
    free_port,
    hold_emits,
    relay_env,
    wait_until,
)

PROMPT = "How do I write a python function that counts words?"
FOLLOW_UP = "And how would I test that function?"
SLOW_DEMO = {
    "LLM_PROVIDER": "demo",
    "DEMO_TTFT": "0.5",
    "DEMO_TOKENS_PER_SECOND": "20",
    **UNLIMITED,
}
# The CLI's default URL comes from CHAT_URL; a developer's must not leak in. The
# owner cookies it keeps go to a folder of the tests' own, not the developer's.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "CHAT_URL"}
CLI_ENV["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="chatstream-cli-")


@contextmanager
def own_relay(tmp: Path, env: dict[str, str]) -> Iterator[Relay]:
    """A relay for one purpose, shut down quickly (SIGQUIT) when done with."""
    server = Relay(tmp, DEFAULT_ASYNC_MODE, env)
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


@pytest.fixture(scope="module")
def resume_server(tmp_session, upstream) -> Iterator[Relay]:
    """The relay in front of the test server, keeping answers 30 s for a resume, and
    waiting for a first token as long as a test asks."""
    env = relay_env(upstream, RESUME_GRACE_SECONDS="30", UPSTREAM_READ_TIMEOUT="90")
    with own_relay(tmp_session, env) as server:
        yield server


class Proxy:
    """A TCP relay in front of a server, whose connections a test can cut: the way
    to drop the connection under a CLI subprocess."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return  # closed
            with self.lock:
                self.sockets += [client, server]
            for pair in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=pair, daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every connection through the proxy; new ones are let through."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.close()
        self.cut()


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


def cut(chat: ChatClient) -> None:
    """Drop the transport under a client, as a network failure would."""
    chat._sio.eio.ws.sock.shutdown(socket.SHUT_RDWR)


def recorded(chat: ChatClient) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    chat.on_event = lambda *event: events.append(event)
    return events


def wait_no_live_streams(server: Relay) -> None:
    server.wait_idle()


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
        assert chat.last_result["usage"]["completion_tokens"] == 3
    # Exactly the answer's first three tokens, however many events carried them
    # (the demo model sends tokens that came due together as one delta).
    tokens = split_tokens(compose([{"role": "user", "content": PROMPT}]))
    assert "".join(deltas) == "".join(tokens[:3])


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


def test_break_cancels_the_request(slow_server, demo_server):
    full = answers(demo_server.url, PROMPT)[0]
    with ChatClient(slow_server.url) as chat:
        deltas = []
        for delta in chat.stream(PROMPT):
            deltas.append(delta)
            break
        assert chat.last_result["finish_reason"] == "cancelled"
        assert chat.history[0] == {"role": "user", "content": PROMPT}
        assert chat.history[1]["content"].startswith(deltas[0])
        # Cut short: the rest of the answer was never generated.
        assert full.startswith(chat.history[1]["content"])
        assert len(chat.history[1]["content"]) < len(full)
        wait_no_live_streams(slow_server)
        # The connection's slot is free again for the next request.
        assert list(chat.stream(FOLLOW_UP, options={"max_tokens": 2}))


def test_stop_from_another_thread_ends_with_cancelled(slow_server, demo_server):
    full = answers(demo_server.url, PROMPT)[0]
    with ChatClient(slow_server.url) as chat:
        deltas = []
        for delta in chat.stream(PROMPT):
            deltas.append(delta)
            if len(deltas) == 2:
                threading.Thread(target=chat.stop).start()
        assert chat.last_result["finish_reason"] == "cancelled"
    text = "".join(deltas)
    assert full.startswith(text)
    assert len(text) < len(full)
    assert chat.history[-1] == {"role": "assistant", "content": text}


def test_stop_before_any_text_leaves_no_empty_turn(resume_server):
    def on_event(name: str, data: dict) -> None:
        if name == "ack":
            chat.stop()  # a minute before the first token

    with ChatClient(resume_server.url, on_event=on_event) as chat:
        assert chat.ask(f"{PROMPT} [[ttft:60]]") == ""
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
    # Promptly: the refusal, not the hour's timeout, ends the attempt (had it been
    # waited out, pytest's own timeout would have failed the test).
    chat = ChatClient(closed_url(), timeout=3600)
    with pytest.raises(ChatConnectionError) as caught:
        chat.connect()
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


# The tool loop end to end: the relay in front of the test server, whose
# [[tool_calls:N]] makes the model answer with its usual text, then call N tools at
# once (build_tool_calls says which), and answer in text once given their results

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]


def test_tool_loop_end_to_end_through_the_relay(resume_server, upstream):
    from tests.openai_server import build_reply, build_tool_calls

    prompt = "Weather and time in Paris, asked by the Python client [[tool_calls:3]]"
    system = {"role": "system", "content": SYSTEM_PROMPT}
    user = {"role": "user", "content": prompt}
    # build_tool_calls gives each call as {id, name, arguments}: in OpenAI's shape,
    # they are what the done event carries.
    calls = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in build_tool_calls([system, user], WEATHER_TOOLS, 3)
    ]
    assert len(calls) == 3
    text = "".join(build_reply([system, user], 30))
    with ChatClient(resume_server.url, tools=WEATHER_TOOLS) as chat:
        events = recorded(chat)
        # 1. The model says a few words, then asks for three calls at once.
        deltas = list(chat.stream(prompt, reasoning=True))
        assert chat.last_result["finish_reason"] == "tool_calls"
        assert chat.last_result["tool_calls"] == calls
        kinds = [delta.kind for delta in deltas]
        answered = kinds.count("answer")
        assert kinds == ["answer"] * answered + ["tool_call"] * (len(kinds) - answered)
        assert "".join(delta.text for delta in deltas[:answered]) == text
        # Every fragment came once, in order: each call's concatenate to its
        # arguments, and each names its call.
        pieces: dict[int, list[Delta]] = {}
        for delta in deltas[answered:]:
            pieces.setdefault(delta.tool_call.index, []).append(delta)
        assert sorted(pieces) == [0, 1, 2]
        for index, call in enumerate(calls):
            assert (
                "".join(d.text for d in pieces[index]) == call["function"]["arguments"]
            )
            assert {(d.tool_call.id, d.tool_call.name) for d in pieces[index]} == {
                (call["id"], call["function"]["name"])
            }
        seqs = [data["seq"] for name, data in events if name == "chunk"]
        assert seqs == list(range(chat.last_result["chunks"]))
        assistant = {"role": "assistant", "content": text, "tool_calls": calls}
        assert chat.history == [user, assistant]
        # 2. The client runs them and sends the results (given in another order),
        # 3. and the model answers in text.
        results = {
            call["id"]: f"result {n} of {call['id']}" for n, call in enumerate(calls)
        }
        answer = chat.ask(tool_results=dict(reversed(results.items())))
        assert chat.last_result["finish_reason"] == "stop"
        assert chat.last_result["tool_calls"] == []
        tool_turns = [
            {"role": "tool", "tool_call_id": call["id"], "content": results[call["id"]]}
            for call in calls
        ]
        assert chat.history == [
            user,
            assistant,
            *tool_turns,
            {"role": "assistant", "content": answer},
        ]
    # The upstream got the loop exactly, after the server's system prompt.
    loop = [system, user, assistant, *tool_turns]
    [record] = [
        r
        for r in upstream.requests()
        if r["messages"][1:2] == [user] and r["messages"][-1]["role"] == "tool"
    ]
    assert record["messages"] == loop
    assert record["body"]["tools"] == WEATHER_TOOLS
    assert answer == "".join(build_reply(loop, 30))


# Resume after a dropped connection


def test_cut_connection_is_resumed_with_the_exact_answer(resume_server):
    prompt = "resume me [[tokens:200]] [[tps:100]]"
    full = answers(resume_server.url, prompt)[0]
    with ChatClient(resume_server.url) as chat:
        events = recorded(chat)
        resumes = hold_emits(chat, "resume")
        deltas = []
        for delta in chat.stream(prompt):
            deltas.append(delta)
            if len(deltas) == 10:
                cut(chat)
        assert "".join(deltas) == full
        assert chat.last_result["finish_reason"] == "stop"
        assert chat.history == [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": full},
        ]
    names = [name for name, _ in events]
    assert names.count("resume_ack") == 1
    resume_ack = next(data for name, data in events if name == "resume_ack")
    assert resume_ack["ok"] is True
    # The replay: the chunks sent while the connection was away (at 100 a second,
    # some), and no more than the answer had after the last one held.
    [resume] = resumes
    assert resume["ack"] == resume_ack
    after = resume["payload"]["after"]
    assert 0 < resume_ack["replayed"] <= events[-1][1]["chunks"] - 1 - after
    # Resumed after the last chunk held: nothing came twice, nothing was skipped.
    seqs = [data["seq"] for name, data in events if name == "chunk"]
    assert seqs == list(range(len(seqs)))
    assert names[-1] == "done"


def test_a_resume_after_the_answer_ended_replays_exactly_what_was_missing(
    resume_server,
):
    prompt = "resume me once it ended [[tokens:200]] [[tps:100]]"
    full = answers(resume_server.url, prompt)[0]
    with ChatClient(resume_server.url) as chat:
        # The client resumes once the answer has ended on the server (which logs
        # it): all it missed is there to replay.
        resumes = hold_emits(
            chat,
            "resume",
            lambda resume: (
                f"request {resume['id']} finished" in resume_server.process.log_text()
            ),
        )
        deltas = []
        for delta in chat.stream(prompt):
            deltas.append(delta)
            if len(deltas) == 10:
                cut(chat)
        assert "".join(deltas) == full
        [resume] = resumes
        # The ack follows the replay, which ends with the done: it may come after
        # the stream has returned.
        wait_until(lambda: resume["ack"] is not None, what="the resume's ack")
        missing = chat.last_result["chunks"] - 1 - resume["payload"]["after"]
        assert missing > 0
        assert resume["ack"] == {"ok": True, "id": resume["payload"]["id"]} | {
            "replayed": missing
        }


def test_two_cuts_in_one_answer_still_give_the_exact_answer(resume_server):
    prompt = "resume me twice [[tokens:300]] [[tps:100]]"
    full = answers(resume_server.url, prompt)[0]
    with ChatClient(resume_server.url) as chat:
        events = recorded(chat)
        deltas: list[str] = []
        cuts: list[int] = []
        for delta in chat.stream(prompt):
            deltas.append(delta)
            resumes = [name for name, _ in events].count("resume_ack")
            # The second cut comes once resumed: the deltas after the resume_ack
            # are live ones.
            if len(deltas) >= 10 and len(cuts) == resumes < 2:
                cut(chat)
                cuts.append(len(deltas))
        assert len(cuts) == 2
        assert "".join(deltas) == full
        assert chat.last_result["finish_reason"] == "stop"
        assert [turn["content"] for turn in chat.history] == [prompt, full]
    assert [d["ok"] for name, d in events if name == "resume_ack"] == [True, True]


def test_stop_while_disconnected_cancels_once_resumed(resume_server):
    prompt = "stop me while away [[tokens:300]] [[tps:100]]"
    full = answers(resume_server.url, prompt)[0]
    with ChatClient(resume_server.url) as chat:
        deltas = []
        for delta in chat.stream(prompt):
            deltas.append(delta)
            if len(deltas) == 5:
                cut(chat)
                chat.stop()  # no connection to send it on: it waits for the resume
        assert chat.last_result["finish_reason"] == "cancelled"
        text = "".join(deltas)
        assert full.startswith(text)
        assert len(text) < len(full)
        assert chat.history[-1] == {"role": "assistant", "content": text}
        wait_no_live_streams(resume_server)


def test_refused_resume_raises_disconnected_and_keeps_history(tmp_session, upstream):
    # With no grace at all the server forgets a request as soon as its client drops.
    env = relay_env(upstream, RESUME_GRACE_SECONDS="0")
    # Were the refusal not final, the hour's resume_timeout would time the test out.
    with (
        own_relay(tmp_session, env) as server,
        ChatClient(server.url, resume_timeout=3600) as chat,
    ):
        events = recorded(chat)
        chat.ask("a first turn [[tokens:3]]")
        before = [dict(turn) for turn in chat.history]
        with pytest.raises(ChatConnectionError) as caught:
            for n, _ in enumerate(chat.stream("resume refused [[tokens:300]]")):
                if n == 5:
                    cut(chat)
        assert caught.value.code == "disconnected"
        assert caught.value.retryable is True
        assert "resume_denied" in caught.value.message
        assert chat.history == before
        assert [d["ok"] for n, d in events if n == "resume_ack"] == [False]
        # Reconnected all the same: the client goes on.
        assert chat.ask("after the refusal [[tokens:3]]")
        assert len(chat.history) == 4


def test_server_gone_for_good_raises_disconnected_within_the_bound(tmp_session):
    with (
        own_relay(tmp_session, SLOW_DEMO) as server,
        ChatClient(server.url, resume_timeout=2) as chat,
    ):
        gone = None
        with pytest.raises(ChatConnectionError) as caught:
            for _ in chat.stream(PROMPT):
                if gone is None:
                    # SIGQUIT: gunicorn's quick shutdown, which drops every
                    # connection; nothing will answer the reconnection attempts.
                    server.process.proc.send_signal(signal.SIGQUIT)
                    gone = time.monotonic()
        # It waited out the whole bound (a busy machine only makes this longer)...
        assert time.monotonic() - gone >= 2
        # ...and gave up for that reason.
        assert caught.value.code == "disconnected"
        assert caught.value.retryable is True
        assert "within 2s" in caught.value.message
        assert chat.history == []
        assert chat.last_result is None


def test_close_during_a_reconnection_ends_the_stream_at_once(tmp_session):
    with own_relay(tmp_session, SLOW_DEMO) as server:
        # Were the close not final, the hour's resume_timeout would time the test out.
        chat = ChatClient(server.url, resume_timeout=3600)
        chat.connect()

        def close_once_reconnecting() -> None:
            wait_until(lambda: not chat.connected, what="the dropped connection")
            chat.close()

        closer = None
        with pytest.raises(ChatConnectionError) as caught:
            for _ in chat.stream(PROMPT):
                if closer is None:
                    server.process.proc.send_signal(signal.SIGQUIT)
                    closer = threading.Thread(target=close_once_reconnecting)
                    closer.start()
        closer.join()
        assert caught.value.code == "disconnected"
        assert "client closed" in caught.value.message
        assert chat.history == []


def test_out_of_order_and_repeated_chunks_come_out_in_seq_order():
    answer = Answer()
    out = []
    for seq, delta in [(1, "b"), (0, "a"), (0, "a"), (3, "d"), (2, "c"), (1, "b")]:
        out += answer.feed("chunk", {"id": "x", "seq": seq, "delta": delta})
    assert out == ["a", "b", "c", "d"]
    assert answer.feed("done", {"id": "x", "finish_reason": "stop"}) == []
    assert answer.text == "abcd"


def test_answer_waits_out_a_drop_and_takes_a_refused_resume_as_disconnected():
    answer = Answer()
    answer.feed("ack", {"ok": True, "id": "x", "resume_token": "t"})
    answer.feed("chunk", {"id": "x", "seq": 0, "delta": "a"})
    assert answer.feed("disconnected", {"reason": "transport error"}) == []
    assert answer.away_since is not None
    assert answer.feed("chunk", {"id": "x", "seq": 1, "delta": "b"}) == ["b"]
    assert answer.feed("resume_ack", {"ok": True, "id": "x", "replayed": 1}) == []
    assert answer.away_since is None
    answer.feed("disconnected", {"reason": "transport error"})
    assert answer.feed("error", {"id": "x", "code": "resume_denied"}) == []
    refusal = {"code": "resume_denied", "message": "no resumable request"}
    with pytest.raises(ChatConnectionError) as caught:
        answer.feed("resume_ack", {"ok": False, "error": refusal})
    assert caught.value.code == "disconnected"
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    "acked, data",
    [(False, {"reason": "transport error"}), (True, {"reason": "x", "final": True})],
)
def test_answer_cannot_wait_for_a_resume_without_a_token_or_a_reconnection(acked, data):
    answer = Answer()
    if acked:
        answer.feed("ack", {"ok": True, "id": "x", "resume_token": "t"})
    with pytest.raises(ChatConnectionError) as caught:
        answer.feed("disconnected", data)
    assert caught.value.code == "disconnected"


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
    # The refusal, not the hour's timeout, ends it (run_cli's own bound is 30 s).
    result = run_cli("--timeout", "3600", "--url", closed_url(), PROMPT)
    assert result.returncode == 3
    assert result.stderr.startswith("error: connection_failed: ")
    assert "refused" in result.stderr.lower()


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
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
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


def cli_through(proxy: Proxy, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "client", "--url", proxy.url, *args],
        cwd=ROOT,
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_cli_json_shows_the_resume_ack_after_a_cut(resume_server):
    prompt = "cli json resume [[tokens:200]] [[tps:100]]"
    full = answers(resume_server.url, prompt)[0]
    with Proxy(resume_server.port) as proxy:
        proc = cli_through(proxy, "--json", prompt)
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if [event["event"] for event in events].count("chunk") == 10:
                proxy.cut()
        err = proc.stderr.read().decode()
        assert proc.wait(10) == 0, err
    names = [event["event"] for event in events]
    assert names.count("resume_ack") == 1
    assert next(e for e in events if e["event"] == "resume_ack")["data"]["ok"]
    chunks = [event["data"] for event in events if event["event"] == "chunk"]
    assert [chunk["seq"] for chunk in chunks] == list(range(len(chunks)))
    assert "".join(chunk["delta"] for chunk in chunks) == full
    assert names[-1] == "done"
    assert events[-1]["data"]["finish_reason"] == "stop"


def test_cli_prints_the_whole_answer_and_a_note_after_a_cut(resume_server):
    prompt = "cli plain resume [[tokens:200]] [[tps:100]]"
    full = answers(resume_server.url, prompt)[0]
    with Proxy(resume_server.port) as proxy:
        proc = cli_through(proxy, prompt)
        # os.read: communicate() below reads the pipe itself, past any buffer.
        first = b""
        while len(first) < 20:
            read = os.read(proc.stdout.fileno(), 20)
            assert read, proc.stderr.read()
            first += read
        proxy.cut()
        rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (first + rest).decode() == full + "\n"
    assert err.decode() == "[reconnected]\n"  # not a terminal: no dim escape codes


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


# Reasoning, against a scripted server: no network (the real server's reasoning
# streams are tested end to end once the demo model offers them)

REASONED_DONE = {
    "finish_reason": "stop",
    "usage": {
        "prompt_tokens": 7,
        "completion_tokens": 9,
        "total_tokens": 16,
        "reasoning_tokens": 5,
        "estimated": False,
    },
    "timing": {"ttft_ms": 40.0, "answer_ttft_ms": 900.0, "total_ms": 1200.0},
    "model": "demo-reasoning",
    "chunks": 4,
}


def reasoned(request_id: str) -> list[tuple[str, dict]]:
    """Two chunks of reasoning, then two of answer, then the done."""
    return [
        ("chunk", {"seq": 0, "delta": "The sky ", "kind": "reasoning"}),
        ("chunk", {"seq": 1, "delta": "scatters blue.", "kind": "reasoning"}),
        ("chunk", {"seq": 2, "delta": "Rayleigh "}),
        ("chunk", {"seq": 3, "delta": "scattering."}),
        ("done", REASONED_DONE),
    ]


REASONED_DELTAS = [
    Delta("reasoning", "The sky "),
    Delta("reasoning", "scatters blue."),
    Delta("answer", "Rayleigh "),
    Delta("answer", "scattering."),
]


class ScriptedClient(ChatClient):
    """A ChatClient whose server is a script: each ``chat`` is acknowledged and
    answered at once with the events ``script(request_id)`` lists (or refused with
    ``refusal``: an error event, then the negative ack); ``sent`` records what the
    client sent."""

    script = staticmethod(reasoned)
    refusal: dict | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, dict]] = []

    def connect(self) -> None:
        pass

    def _emit(self, event, data, callback) -> None:
        self.sent.append((event, data))
        if event != "chat":
            return
        request_id = data["id"]
        if self.refusal is not None:
            self._dispatch("error", {"id": request_id, **self.refusal})
            callback({"ok": False, "error": self.refusal})
            return
        callback({"ok": True, "id": request_id, "model": "m", "resume_token": "t"})
        for event_name, payload in self.script(request_id):
            self._dispatch(event_name, {"id": request_id, **payload})


def chats_sent(chat: ScriptedClient) -> list[dict]:
    return [data for event, data in chat.sent if event == "chat"]


def test_stream_yields_only_the_answer_of_a_reasoning_model():
    assert list(ScriptedClient().stream("Why blue?")) == ["Rayleigh ", "scattering."]


def test_stream_with_reasoning_yields_both_kinds_in_order():
    deltas = list(ScriptedClient().stream("Why blue?", reasoning=True))
    assert deltas == REASONED_DELTAS
    assert [kind for kind, _ in deltas] == ["reasoning"] * 2 + ["answer"] * 2


def test_last_result_carries_the_reasoning_and_its_tokens():
    chat = ScriptedClient()
    assert chat.ask("Why blue?") == "Rayleigh scattering."
    assert chat.last_result["reasoning"] == "The sky scatters blue."
    assert chat.last_result["usage"]["reasoning_tokens"] == 5
    assert chat.last_result["timing"]["answer_ttft_ms"] == 900.0
    assert chat.last_result["finish_reason"] == "stop"


def test_reasoning_never_joins_the_history_or_goes_back_to_the_server():
    chat = ScriptedClient()
    list(chat.stream("Why blue?", reasoning=True))
    chat.ask("And at sunset?")
    answer = {"role": "assistant", "content": "Rayleigh scattering."}
    assert chat.history == [
        {"role": "user", "content": "Why blue?"},
        answer,
        {"role": "user", "content": "And at sunset?"},
        answer,
    ]
    second = chats_sent(chat)[1]
    assert second["messages"] == chat.history[:3]
    assert "reasoning" not in json.dumps(second)


def test_an_answer_of_reasoning_alone_leaves_no_turn_but_a_result():
    def cut_by_max_tokens(request_id: str) -> list[tuple[str, dict]]:
        done = {**REASONED_DONE, "finish_reason": "length", "chunks": 1}
        done["timing"] = {**done["timing"], "answer_ttft_ms": None}
        return [
            ("chunk", {"seq": 0, "delta": "Hmm, let me", "kind": "reasoning"}),
            ("done", done),
        ]

    chat = ScriptedClient()
    chat.script = cut_by_max_tokens
    assert chat.ask("Think hard") == ""
    # The server refuses an empty assistant turn: the exchange is taken back.
    assert chat.history == []
    assert chat.last_result["finish_reason"] == "length"
    assert chat.last_result["reasoning"] == "Hmm, let me"
    assert chat.last_result["timing"]["answer_ttft_ms"] is None


def test_reasoning_chunks_reach_on_event_as_sent():
    events: list[tuple[str, dict]] = []
    ScriptedClient(on_event=lambda *event: events.append(event)).ask("Why blue?")
    chunks = [data for name, data in events if name == "chunk"]
    assert [chunk.get("kind") for chunk in chunks] == ["reasoning"] * 2 + [None] * 2
    assert [name for name, _ in events][-1] == "done"


def test_a_resume_asks_for_what_follows_the_last_chunk_in_seq_order():
    # Chunk 3 overtook chunk 2, then the connection dropped: the resume asks for
    # everything after 1, and the replay of 3 is not yielded twice.
    def dropped(request_id: str) -> list[tuple[str, dict]]:
        events = reasoned(request_id)
        return [events[0], events[1], events[3]]

    class Resuming(ScriptedClient):
        def _emit(self, event, data, callback) -> None:
            super()._emit(event, data, callback)
            if event == "chat":
                request = self._requests[data["id"]]
                drop = {"reason": "transport error", "final": False}
                self._dispatch("disconnected", drop, request)
                self._on_connect()
            elif event == "resume":
                callback({"ok": True, "id": data["id"], "replayed": 2})
                for name, payload in reasoned(data["id"])[2:]:
                    self._dispatch(name, {"id": data["id"], **payload})

    chat = Resuming()
    chat.script = dropped
    deltas = list(chat.stream("Why blue?", reasoning=True))
    assert deltas == REASONED_DELTAS  # each chunk once, in seq order
    [resume] = [data for event, data in chat.sent if event == "resume"]
    assert (resume["token"], resume["after"]) == ("t", 1)
    assert chat.history[-1] == {"role": "assistant", "content": "Rayleigh scattering."}


@pytest.mark.parametrize("retryable", [True, False, None])
def test_a_refused_chat_takes_retryable_from_the_ack(retryable):
    refusal = {"code": "shutting_down", "message": "the server is restarting"}
    if retryable is not None:
        refusal["retryable"] = retryable
    events: list[tuple[str, dict]] = []
    chat = ScriptedClient(on_event=lambda *event: events.append(event))
    chat.refusal = refusal
    with pytest.raises(ChatError) as caught:
        chat.ask("hello")
    assert caught.value.code == "shutting_down"
    assert caught.value.retryable is bool(retryable)
    assert [name for name, _ in events] == ["error", "ack"]
    assert chat.history == []


@pytest.fixture
def scripted_cli(monkeypatch):
    """``python -m client`` in this process, talking to a ScriptedClient."""
    monkeypatch.setattr(cli, "ChatClient", ScriptedClient)

    def run(*args: str) -> int:
        return cli.main(["--url", "http://127.0.0.1:9", *args, "Why blue?"])

    return run


def test_cli_prints_the_reasoning_then_a_blank_line_then_the_answer(
    scripted_cli, capsys
):
    assert scripted_cli() == 0
    out, err = capsys.readouterr()
    # Not a terminal: no escape codes.
    assert out == "The sky scatters blue.\n\nRayleigh scattering.\n"
    assert err == ""


def test_cli_dims_the_reasoning_on_a_terminal(scripted_cli, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert scripted_cli() == 0
    dim, plain = "\x1b[2m", "\x1b[0m"
    assert capsys.readouterr().out == (
        f"{dim}The sky {plain}{dim}scatters blue.{plain}\n\nRayleigh scattering.\n"
    )


def test_cli_no_reasoning_prints_the_answer_alone(scripted_cli, capsys):
    assert scripted_cli("--no-reasoning") == 0
    assert capsys.readouterr().out == "Rayleigh scattering.\n"


def test_cli_json_prints_reasoning_chunks_as_sent(scripted_cli, capsys):
    assert scripted_cli("--json", "--no-reasoning") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [event["event"] for event in events] == ["ack"] + ["chunk"] * 4 + ["done"]
    assert events[1]["data"]["kind"] == "reasoning"
    assert "kind" not in events[3]["data"]
    assert events[-1]["data"]["usage"]["reasoning_tokens"] == 5


def test_cli_stats_show_when_the_answer_began_and_the_reasoning_tokens(
    scripted_cli, capsys
):
    assert scripted_cli("--stats") == 0
    err = capsys.readouterr().err
    assert "ttft: 40 ms  answer ttft: 900 ms" in err
    assert "9 completion (5 reasoning) = 16 tokens" in err
