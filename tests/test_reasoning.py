"""Reasoning models: their thinking streams as ``kind: "reasoning"`` chunks before the
answer, from every upstream format, through resume, side by side with other clients,
and from the demo model to the Python client."""

import pytest

from app.providers.demo import compose, compose_reasoning, split_tokens
from client import ChatClient

from .conftest import (
    SYSTEM_PROMPT,
    Recorder,
    Relay,
    relay_env,
    upstream_reasoning,
    upstream_text,
)
from .openai_server import build_reasoning
from .test_resume import contiguous

FORMATS = ["reasoning_content", "reasoning", "think"]


def texts(client: Recorder, request_id: str) -> tuple[str, str]:
    """(reasoning, answer) as received, each in seq order."""
    chunks = client.chunks(request_id)
    reasoning = "".join(c["delta"] for c in chunks if c.get("kind") == "reasoning")
    answer = "".join(c["delta"] for c in chunks if "kind" not in c)
    return reasoning, answer


def kinds(client: Recorder, request_id: str) -> list[str]:
    return [c.get("kind", "answer") for c in client.chunks(request_id)]


@pytest.mark.parametrize("field", FORMATS)
def test_each_upstream_format_streams_reasoning_then_the_answer(relay, connect, field):
    client = connect()
    prompt = f"think first [[reasoning:12]] [[reasoning_field:{field}]] [[tokens:10]]"
    assert client.chat("r", prompt)["ok"]
    name, done = client.wait_end("r")
    assert name == "done"
    assert texts(client, "r") == (
        upstream_reasoning(prompt, 12),
        upstream_text(prompt, 10),
    )
    # Every reasoning chunk comes before the first answer chunk.
    assert kinds(client, "r") == ["reasoning"] * 12 + ["answer"] * 10
    assert done["usage"]["reasoning_tokens"] == 12
    assert done["usage"]["completion_tokens"] == 22
    assert done["usage"]["estimated"] is False
    assert done["timing"]["answer_ttft_ms"] >= done["timing"]["ttft_ms"]


def test_think_tags_cut_across_chunks_are_read_whole(relay, connect):
    client = connect()
    prompt = "split tags [[reasoning:6]] [[reasoning_field:think]] [[split_think]]"
    assert client.chat("s", prompt)["ok"]
    assert client.wait_end("s")[0] == "done"
    reasoning, answer = texts(client, "s")
    assert reasoning == upstream_reasoning(prompt, 6)
    assert answer == upstream_text(prompt)
    assert "<th" not in reasoning + answer and "nk>" not in reasoning + answer


def test_think_tags_pass_through_as_text_when_turned_off(tmp_session, upstream):
    relay = Relay(tmp_session, "gevent", relay_env(upstream, THINK_TAGS="false"))
    client = Recorder(relay.url)
    try:
        prompt = "tags as text [[reasoning:5]] [[reasoning_field:think]] [[tokens:8]]"
        assert client.chat("t", prompt)["ok"]
        assert client.wait_end("t")[0] == "done"
        reasoning = upstream_reasoning(prompt, 5)
        answer = upstream_text(prompt, 8)
        assert texts(client, "t") == ("", f"<think>{reasoning}</think>{answer}")
    finally:
        client.close()
        relay.process.stop()


def test_max_tokens_inside_the_reasoning_keeps_it_and_ends_with_length(relay, connect):
    client = connect()
    prompt = "cut short [[reasoning:30]] [[tokens:10]]"
    ack = client.chat("m", prompt, options={"max_tokens": 7})
    assert ack["ok"]
    name, done = client.wait_end("m")
    assert name == "done"
    assert done["finish_reason"] == "length"
    assert texts(client, "m") == (
        "".join(build_reasoning_for(prompt, 30)[:7]),
        "",
    )
    assert done["usage"]["reasoning_tokens"] == 7
    assert done["timing"]["answer_ttft_ms"] is None


def build_reasoning_for(prompt: str, words: int) -> list[str]:
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    return build_reasoning(messages, words)


def test_reasoning_tokens_are_counted_when_the_upstream_reports_no_usage(
    relay, connect
):
    client = connect()
    prompt = "count them [[reasoning:9]] [[tokens:5]] [[no_usage]]"
    assert client.chat("u", prompt)["ok"]
    done = client.wait_end("u")[1]
    reasoning, _ = texts(client, "u")
    from app import tokens

    assert done["usage"]["estimated"] is True
    assert done["usage"]["reasoning_tokens"] == tokens.count_text(reasoning)


def test_resume_in_the_middle_of_the_reasoning_gets_the_exact_rest(relay, connect):
    prompt = f"resume thinking {relay.async_mode} [[reasoning:100]] [[tps:50]]"
    prompt += " [[tokens:20]]"
    first = connect(transports=["websocket"])
    token = first.chat("mid", prompt)["resume_token"]
    first.wait(lambda c: len(c.chunks("mid")) >= 3)
    first.cut()
    first.wait(lambda c: contiguous(c.chunks("mid")))
    held = first.chunks("mid")
    assert held[-1]["kind"] == "reasoning"
    second = connect()
    ack = second.call("resume", {"id": "mid", "token": token, "after": held[-1]["seq"]})
    assert ack["ok"] is True
    assert second.wait_end("mid")[0] == "done"
    chunks = held + second.chunks("mid")
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    reasoning = "".join(c["delta"] for c in chunks if c.get("kind") == "reasoning")
    answer = "".join(c["delta"] for c in chunks if "kind" not in c)
    assert reasoning == upstream_reasoning(prompt, 100)
    assert answer == upstream_text(prompt, 20)


def test_resume_at_the_switch_to_the_answer_replays_only_the_answer(relay, connect):
    prompt = f"resume at switch {relay.async_mode} [[reasoning:8]] [[tokens:6]]"
    first = connect(transports=["websocket"])
    token = first.chat("sw", prompt)["resume_token"]
    first.wait(lambda c: len(c.chunks("sw")) >= 1)
    first.cut()
    relay.wait_log("request sw finished")
    # One event per upstream chunk in these tests: seq 7 is the last reasoning one.
    second = connect()
    ack = second.call("resume", {"id": "sw", "token": token, "after": 7})
    assert ack == {"ok": True, "id": "sw", "replayed": 6}
    assert second.wait_end("sw")[0] == "done"
    assert kinds(second, "sw") == ["answer"] * 6
    assert texts(second, "sw") == ("", upstream_text(prompt, 6))


def test_reasoning_streams_side_by_side_reach_only_their_own_client(relay, connect):
    clients = [connect() for _ in FORMATS]
    prompts = [
        f"side {n} [[reasoning:{10 + n}]] [[reasoning_field:{field}]] [[tokens:8]]"
        for n, field in enumerate(FORMATS)
    ]
    for n, client in enumerate(clients):
        assert client.chat(f"p{n}", prompts[n])["ok"]
    for n, client in enumerate(clients):
        assert client.wait_end(f"p{n}")[0] == "done"
        assert texts(client, f"p{n}") == (
            upstream_reasoning(prompts[n], 10 + n),
            upstream_text(prompts[n], 8),
        )
        assert {data["id"] for _, data in client.events} == {f"p{n}"}


def test_demo_reasoning_model_through_the_python_client(demo_server):
    question = "Why is the sky blue?"
    messages = [{"role": "user", "content": question}]
    with ChatClient(demo_server.url, model="demo-reasoning") as chat:
        pieces = list(chat.stream(question, reasoning=True))
        result = chat.last_result
        history = chat.history
    reasoning = "".join(text for kind, text in pieces if kind == "reasoning")
    answer = "".join(text for kind, text in pieces if kind == "answer")
    assert reasoning == compose_reasoning(messages)
    assert answer == compose(messages)
    # The reasoning comes first, and never enters the conversation sent back.
    first_answer = next(i for i, (kind, _) in enumerate(pieces) if kind == "answer")
    assert all(kind == "reasoning" for kind, _ in pieces[:first_answer])
    assert result["reasoning"] == reasoning
    assert result["usage"]["reasoning_tokens"] == len(split_tokens(reasoning))
    assert history == [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
