"""The OpenAI test server, driven over real HTTP by the official openai package."""

import base64
import itertools
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.openai_server import (
    build_json_reply,
    build_reasoning,
    build_reply,
    build_tool_calls,
    split_reply,
    token_logprobs,
)
from tests.openai_server.tools import tool_tokens

ROOT = Path(__file__).resolve().parent.parent
MODEL = "test-model"
API_KEY = "sk-right-4f9c2a7e1b"


def start_server(*args: str) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.openai_server", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """An open server, paced fast so the module stays quick."""
    yield from start_server("--ttft", "0.01", "--tps", "1000")


@pytest.fixture(scope="module")
def locked_port() -> Iterator[int]:
    """A server that wants an API key and serves two models only."""
    yield from start_server("--api-key", API_KEY, "--models", f"{MODEL},other-model")


@pytest.fixture
def client(port: int) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0
    )


def ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def stream(
    client: openai.OpenAI, prompt: str, **options: Any
) -> openai.Stream[ChatCompletionChunk]:
    return client.chat.completions.create(
        model=MODEL,
        messages=ask(prompt),
        stream=True,
        stream_options={"include_usage": True},
        **options,
    )


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(
        choice.delta.content or "" for chunk in chunks for choice in chunk.choices or []
    )


def content_chunks(chunks: list[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    return [c for c in chunks if c.choices and c.choices[0].delta.content]


def read_until_error(iterator: Any) -> tuple[list[ChatCompletionChunk], Exception]:
    chunks: list[ChatCompletionChunk] = []
    try:
        for chunk in iterator:
            chunks.append(chunk)
    except openai.APIError as exc:
        return chunks, exc
    raise AssertionError("the stream ended without an error")


def reasoning_of(chunks: list[ChatCompletionChunk], field: str) -> list[str]:
    """The reasoning pieces of a stream, one per chunk that carries `field`."""
    pieces = (
        getattr(choice.delta, field, None)
        for chunk in chunks
        for choice in chunk.choices or []
    )
    return [piece for piece in pieces if piece]


def records(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_requests") as answer:
        return json.load(answer)


def record_for(port: int, marker: str) -> dict[str, Any]:
    found = [r for r in records(port) if marker in json.dumps(r["messages"])]
    assert len(found) == 1, found
    return found[0]


def wait_outcome(port: int, marker: str, timeout: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = record_for(port, marker)
        if record["outcome"] not in ("streaming", "stalled"):
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.02)


def test_stream_sends_role_then_one_word_per_chunk_then_finish_then_usage(client):
    prompt = "What is the capital of France?"
    chunks = list(stream(client, prompt))

    role, *contents, finish, usage = chunks
    assert role.choices[0].delta.role == "assistant"
    assert role.choices[0].delta.content == ""
    assert role.choices[0].finish_reason is None
    expected = build_reply(ask(prompt), 30)
    assert [c.choices[0].delta.content for c in contents] == expected
    assert "".join(expected).startswith('You said "What is the capital".')
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage.completion_tokens == 30
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + 30
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {role.id}
    assert role.id.startswith("chatcmpl-")
    assert {(c.object, c.model) for c in chunks} == {("chat.completion.chunk", MODEL)}


def test_raw_stream_is_sse_ending_with_done(port):
    body = {"model": MODEL, "messages": ask("raw"), "stream": True}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["cache-control"] == "no-cache"
        events = answer.read().decode().split("\n\n")

    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert '"usage"' not in "".join(events)  # only with include_usage


def test_identical_requests_get_identical_text(client):
    first = text_of(list(stream(client, "tell me about owls")))
    second = text_of(list(stream(client, "tell me about owls")))
    other = text_of(list(stream(client, "tell me about cats")))

    assert first == second
    assert len(set(first.split()) ^ set(other.split())) > 10


def test_max_tokens_cuts_the_reply_with_length(client):
    chunks = list(stream(client, "cut me", max_tokens=5))

    assert len(content_chunks(chunks)) == 5
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 5


def test_tokens_directive_sets_length_and_is_not_in_the_reply(client):
    chunks = list(stream(client, "short please [[tokens:4]]"))

    assert text_of(chunks) == "".join(build_reply(ask("short please"), 4))
    assert chunks[-2].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (502, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_status_directive_raises_the_matching_error(client, port, status, error_class):
    marker = f"status test {status}"
    with pytest.raises(error_class) as caught:
        stream(client, f"{marker} [[status:{status}]]")

    assert caught.value.status_code == status
    record = record_for(port, marker)
    assert (record["outcome"], record["status"]) == ("error_status", status)


def test_rate_limit_error_has_openai_type_and_code(client):
    with pytest.raises(openai.RateLimitError) as caught:
        stream(client, "slow down [[status:429]]")

    assert caught.value.type == "rate_limit_exceeded"
    assert caught.value.code == "rate_limit_exceeded"


def test_error_after_raises_api_error_after_n_chunks(client, port):
    chunks, error = read_until_error(stream(client, "fail soon [[error_after:3]]"))

    assert type(error) is openai.APIError
    assert error.type == "server_error"
    assert len(content_chunks(chunks)) == 3
    record = wait_outcome(port, "fail soon")
    assert record["outcome"] == "error_midstream"


def test_fault_past_the_end_comes_after_the_last_word(client):
    prompt = "all then fail [[tokens:3]] [[error_after:99]]"
    chunks, error = read_until_error(stream(client, prompt))

    assert text_of(chunks) == "".join(build_reply(ask("all then fail"), 3))
    assert all(c.choices[0].finish_reason is None for c in chunks)
    assert type(error) is openai.APIError


def test_close_after_raises_connection_error(client, port):
    chunks, error = read_until_error(stream(client, "drop me [[close_after:2]]"))

    assert type(error) is openai.APIConnectionError
    assert len(content_chunks(chunks)) == 2
    assert wait_outcome(port, "drop me")["outcome"] == "aborted"


def test_stall_after_hits_the_client_read_timeout(client, port):
    timeout = openai.Timeout(5.0, read=0.3)
    prompt = "hold on [[stall_after:2]]"
    chunks, error = read_until_error(stream(client, prompt, timeout=timeout))

    assert isinstance(error, openai.APITimeoutError)
    assert len(content_chunks(chunks)) == 2
    assert wait_outcome(port, "hold on")["outcome"] == "client_closed"


@pytest.mark.parametrize("reason", ["length", "content_filter", "tool_calls"])
def test_finish_directive_sets_the_finish_reason(client, reason):
    chunks = list(stream(client, f"finish [[finish:{reason}]]"))

    assert chunks[-2].choices[0].finish_reason == reason
    assert len(content_chunks(chunks)) == 30
    tool_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(tool_calls) == (1 if reason == "tool_calls" else 0)


def test_no_usage_sends_no_usage_chunk(client):
    chunks = list(stream(client, "no usage [[no_usage]]"))

    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_usage_in_choice_puts_usage_on_the_finish_chunk(client):
    chunks = list(stream(client, "usage inside [[usage_in_choice]]"))

    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage.completion_tokens == 30
    assert all(c.choices for c in chunks)


def test_null_and_empty_choices_pass_through_the_parser(client):
    prompt = "odd chunks [[null_choices]] [[empty_choices]]"
    chunks = list(stream(client, prompt))

    assert sum(c.choices is None for c in chunks) == 30
    assert sum(c.choices == [] and c.usage is None for c in chunks) == 30
    assert text_of(chunks) == "".join(build_reply(ask("odd chunks"), 30))


def test_empty_deltas_carry_empty_or_null_content(client):
    chunks = list(stream(client, "gaps [[empty_deltas]]"))

    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    assert contents.count("") == 1 + 15  # the role chunk, then every other gap
    assert contents.count(None) == 15 + 1  # the other gaps, then the finish
    assert text_of(chunks) == "".join(build_reply(ask("gaps"), 30))


def test_keepalive_comments_are_skipped_by_the_parser(client):
    plain = list(stream(client, "beat"))
    with_comments = list(stream(client, "beat [[keepalive]]"))

    assert len(with_comments) == len(plain)
    assert text_of(with_comments) == text_of(plain)


def test_pacing_directives_delay_first_chunk_and_spread_the_rest(client):
    started = time.monotonic()
    chunks = stream(client, "wait [[ttft:0.3]] [[tps:50]] [[tokens:6]]")
    times = [time.monotonic() - started for c in chunks if content_chunks([c])]

    assert times[0] >= 0.3
    assert times[-1] - times[0] >= 5 / 50 * 0.9


def test_tps_zero_streams_a_long_reply_at_once(client):
    started = time.monotonic()
    chunks = list(stream(client, "all at once [[tps:0]] [[ttft:0]] [[tokens:3000]]"))

    assert time.monotonic() - started < 5
    assert text_of(chunks) == "".join(build_reply(ask("all at once"), 3000))


def test_client_close_is_recorded_within_a_second(client, port):
    chunks = stream(client, "long story [[tps:20]] [[tokens:200]]")
    received = list(itertools.islice(chunks, 4))  # the role chunk, then 3 words
    chunks.close()
    closed_at = time.time()

    record = wait_outcome(port, "long story")
    assert len(content_chunks(received)) == 3
    assert record["outcome"] == "client_closed"
    assert record["ended_at"] - closed_at < 1.0
    assert record["chunks_sent"] < 10


def test_record_keeps_what_the_client_asked_for(client, port):
    list(stream(client, "record me", max_tokens=7, temperature=0.25))

    record = record_for(port, "record me")
    assert record["model"] == MODEL
    assert record["messages"] == ask("record me")
    assert record["stream"] is True
    assert record["stream_options"] == {"include_usage": True}
    assert (record["max_tokens"], record["temperature"]) == (7, 0.25)
    assert record["authorization_present"] is True
    assert record["outcome"] == "completed"
    assert record["chunks_sent"] == 1 + 7 + 2
    assert record["started_at"] <= record["ended_at"] <= time.time()


def test_reset_forgets_the_records(client, port):
    list(stream(client, "before reset"))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_reset", method="POST")
    urllib.request.urlopen(request).close()

    assert records(port) == []


def test_request_without_stream_gets_a_whole_completion(client):
    completion = client.chat.completions.create(model=MODEL, messages=ask("whole"))

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "".join(
        build_reply(ask("whole"), 30)
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 30


def test_unknown_directive_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="bogus"):
        stream(client, "typo [[bogus:1]]")


def test_wrong_api_key_is_refused_quoting_the_key(locked_port):
    wrong = openai.OpenAI(
        base_url=f"http://127.0.0.1:{locked_port}/v1",
        api_key="sk-wrong-0042",
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        stream(wrong, "let me in")

    assert caught.value.code == "invalid_api_key"
    assert "Incorrect API key provided: sk-wrong-0042" in caught.value.message


def test_locked_server_serves_only_its_models(locked_port):
    right = openai.OpenAI(
        base_url=f"http://127.0.0.1:{locked_port}/v1", api_key=API_KEY, max_retries=0
    )

    assert [m.id for m in right.models.list()] == [MODEL, "other-model"]
    assert text_of(list(stream(right, "allowed")))
    with pytest.raises(openai.NotFoundError) as caught:
        right.chat.completions.create(model="gpt-unknown", messages=ask("hi"))
    assert caught.value.code == "model_not_found"


def raw_http(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh connection; everything the server sends back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):
            data = conn.recv(65536)
            if not data:
                break
            received += data
    return received


def http_chunks(body: bytes) -> list[bytes]:
    """The data of each HTTP chunk of a chunked body, the last (empty) one left off."""
    chunks = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def test_each_sse_event_is_its_own_http_chunk(port):
    body = json.dumps(
        {"model": MODEL, "messages": ask("framing [[tokens:5]]"), "stream": True}
    ).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    answer = raw_http(port, head + body)

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    headers, _, chunked = rest.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in headers.lower().split(b"\r\n")
    chunks = http_chunks(chunked)
    assert len(chunks) == 1 + 5 + 1 + 1  # role, words, finish, [DONE]
    assert all(c.startswith(b"data: ") and c.count(b"\n\n") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"


def test_chunked_request_body_is_read(port):
    body = json.dumps({"model": MODEL, "messages": ask("chunked upload")}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
        b"content-type: application/json\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n"
    )
    halves = body[:10], body[10:]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(h), h) for h in halves) + b"0\r\n\r\n"
    answer = raw_http(port, head + chunked)

    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    completion = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert completion["choices"][0]["message"]["content"] == "".join(
        build_reply(ask("chunked upload"), 30)
    )


def test_unknown_path_is_a_json_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.get("/nowhere", cast_to=object)

    assert caught.value.body["message"] == "Invalid URL (GET /v1/nowhere)"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_streams_word_by_word_in_its_field_before_the_answer(client, field):
    prompt = f"think first [[reasoning:6]] [[reasoning_field:{field}]]"
    chunks = list(stream(client, prompt))

    expected = build_reasoning(ask("think first"), 6)
    assert reasoning_of(chunks, field) == expected
    assert "".join(expected).endswith(".")
    assert text_of(chunks) == "".join(build_reply(ask("think first"), 30))
    texts = [c for c in chunks if content_chunks([c]) or reasoning_of([c], field)]
    assert [bool(content_chunks([c])) for c in texts] == [False] * 6 + [True] * 30
    other = "reasoning" if field == "reasoning_content" else "reasoning_content"
    assert reasoning_of(chunks, other) == []


def test_reasoning_defaults_to_reasoning_content(client):
    chunks = list(stream(client, "default field [[reasoning:3]]"))

    expected = build_reasoning(ask("default field"), 3)
    assert reasoning_of(chunks, "reasoning_content") == expected


def test_reasoning_differs_from_the_reply_and_between_conversations():
    owls = build_reasoning(ask("owls"), 20)

    assert owls == build_reasoning(ask("owls [[reasoning:20]]"), 20)
    assert owls != build_reasoning(ask("cats"), 20)
    assert build_reasoning(ask("owls"), 5)[:4] == owls[:4]  # a cut is a prefix
    assert "".join(owls) != "".join(build_reply(ask("owls"), 20))


def test_think_field_puts_tagged_reasoning_inline_in_content(client):
    chunks = list(stream(client, "inline [[reasoning:4]] [[reasoning_field:think]]"))

    reasoning = build_reasoning(ask("inline"), 4)
    contents = [c.choices[0].delta.content for c in content_chunks(chunks)]
    assert contents[:4] == [
        "<think>" + reasoning[0],
        reasoning[1],
        reasoning[2],
        reasoning[3] + "</think>",
    ]
    reply = "".join(build_reply(ask("inline"), 30))
    assert text_of(chunks) == "<think>" + "".join(reasoning) + "</think>" + reply
    assert reasoning_of(chunks, "reasoning_content") == []


def test_split_think_cuts_both_tags_across_chunks(client):
    prompt = "in pieces [[reasoning:3]] [[reasoning_field:think]] [[split_think]]"
    chunks = list(stream(client, prompt))

    reasoning = build_reasoning(ask("in pieces"), 3)
    contents = [c.choices[0].delta.content for c in content_chunks(chunks)]
    assert contents[:5] == [
        "<th",
        "ink>" + reasoning[0],
        reasoning[1],
        reasoning[2] + "</thi",
        "nk>",
    ]
    reply = build_reply(ask("in pieces"), 30)
    assert contents[5:] == reply
    assert text_of(chunks) == "<think>" + "".join(reasoning) + "</think>" + "".join(
        reply
    )


def test_split_think_needs_the_think_field(client):
    with pytest.raises(openai.BadRequestError, match="split_think"):
        stream(client, "no field [[reasoning:3]] [[split_think]]")


def test_unknown_reasoning_field_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="reasoning_field"):
        stream(client, "bad field [[reasoning:3]] [[reasoning_field:thoughts]]")


def test_usage_counts_reasoning_and_details_it(client):
    chunks = list(stream(client, "count me [[reasoning:7]] [[tokens:5]]"))

    usage = chunks[-1].usage
    assert usage.completion_tokens == 7 + 5
    assert usage.total_tokens == usage.prompt_tokens + 12
    assert usage.completion_tokens_details.reasoning_tokens == 7


def test_usage_without_reasoning_has_no_details(client):
    chunks = list(stream(client, "plain count [[tokens:5]]"))

    assert chunks[-1].usage.completion_tokens_details is None


def test_usage_in_choice_counts_reasoning_too(client):
    chunks = list(stream(client, "inside [[reasoning:2]] [[usage_in_choice]]"))

    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 2 + 30
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 2


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_max_tokens_inside_the_reasoning_sends_no_answer(client, field):
    prompt = f"cut short [[reasoning:8]] [[reasoning_field:{field}]]"
    chunks = list(stream(client, prompt, max_tokens=3))

    assert reasoning_of(chunks, field) == build_reasoning(ask("cut short"), 8)[:3]
    assert content_chunks(chunks) == []
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 3


def test_max_tokens_inside_think_reasoning_leaves_the_tag_open(client):
    prompt = "cut open [[reasoning:8]] [[reasoning_field:think]] [[split_think]]"
    chunks = list(stream(client, prompt, max_tokens=3))

    reasoning = build_reasoning(ask("cut open"), 8)[:3]
    contents = [c.choices[0].delta.content for c in content_chunks(chunks)]
    assert contents == ["<th", "ink>" + reasoning[0], reasoning[1], reasoning[2]]
    assert chunks[-2].choices[0].finish_reason == "length"


def test_max_tokens_counts_reasoning_before_the_answer(client):
    chunks = list(stream(client, "then answer [[reasoning:4]]", max_tokens=6))

    assert len(reasoning_of(chunks, "reasoning_content")) == 4
    assert text_of(chunks) == "".join(build_reply(ask("then answer"), 30)[:2])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 4


def test_fault_counts_answer_chunks_after_all_the_reasoning(client, port):
    prompt = "reason then fail [[reasoning:4]] [[error_after:2]]"
    chunks, error = read_until_error(stream(client, prompt))

    assert len(reasoning_of(chunks, "reasoning_content")) == 4
    assert len(content_chunks(chunks)) == 2
    assert type(error) is openai.APIError
    record = wait_outcome(port, "reason then fail")
    assert record["outcome"] == "error_midstream"
    assert record["chunks_sent"] == 1 + 4 + 2 + 1


def test_think_reasoning_does_not_count_for_faults(client):
    prompt = (
        "think then drop [[reasoning:3]] [[reasoning_field:think]] [[close_after:1]]"
    )
    chunks, error = read_until_error(stream(client, prompt))

    reasoning = build_reasoning(ask("think then drop"), 3)
    reply = build_reply(ask("think then drop"), 30)
    assert text_of(chunks) == "<think>" + "".join(reasoning) + "</think>" + reply[0]
    assert type(error) is openai.APIConnectionError


def test_reasoning_is_paced_like_content(client):
    started = time.monotonic()
    prompt = "slow thought [[ttft:0.2]] [[tps:40]] [[reasoning:4]] [[tokens:2]]"
    times = [
        time.monotonic() - started
        for c in stream(client, prompt)
        if content_chunks([c]) or reasoning_of([c], "reasoning_content")
    ]

    assert len(times) == 6
    assert times[0] >= 0.2
    assert times[-1] - times[0] >= 5 / 40 * 0.9


def test_whole_completion_carries_the_reasoning(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=ask("whole thought [[reasoning:5]]")
    )

    message = completion.choices[0].message
    expected = "".join(build_reasoning(ask("whole thought"), 5))
    assert message.model_extra["reasoning_content"] == expected
    assert message.content == "".join(build_reply(ask("whole thought"), 30))
    assert completion.usage.completion_tokens == 35
    assert completion.usage.completion_tokens_details.reasoning_tokens == 5


def test_reply_directive_streams_the_given_text_piece_by_piece(client):
    text = "Some *markdown*:\n\n```python\nprint(1)\n```\n\n$$\nx^2\n$$\n"
    encoded = base64.b64encode(text.encode()).decode()
    chunks = list(stream(client, f"say this [[reply:{encoded}]] [[tokens:3]]"))

    pieces = [c.choices[0].delta.content for c in content_chunks(chunks)]
    assert pieces == split_reply(text)
    assert pieces[:3] == ["Some", " *markdown*:", "\n\n```python"]
    assert "".join(pieces) == text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == len(pieces)


def test_reply_directive_that_is_not_base64_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="base64"):
        stream(client, "say this [[reply:not base64!]]")


# --- The whole request, recorded ----------------------------------------------


def test_record_keeps_the_body_exactly_as_sent(client, port):
    sent = {
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["never-said"],
        "seed": 11,
        "frequency_penalty": -0.5,
        "presence_penalty": 1.5,
        "logit_bias": {"1734": -100},
        "logprobs": True,
        "top_logprobs": 3,
        "user": "user-ü-1",
        "metadata": {"team": "東京"},
        "reasoning_effort": "low",
        "response_format": {"type": "text"},
        "max_completion_tokens": 9,
    }
    extra = {"vendor_field": {"nested": [1, 2.5, None, "Zürich"]}}
    list(stream(client, "whole body", extra_body=extra, **sent))

    record = record_for(port, "whole body")
    assert record["body"] == {
        "model": MODEL,
        "messages": ask("whole body"),
        "stream": True,
        "stream_options": {"include_usage": True},
        **sent,
        **extra,
    }
    assert record["prompt"] == "whole body"
    assert record["max_tokens"] == 9


def test_record_prompt_is_the_text_of_the_last_message_parts_joined(client, port):
    content = [
        {"type": "text", "text": "parts marker"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "second part"},
    ]
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}]
    )

    record = [r for r in records(port) if r["prompt"] == "parts marker second part"]
    assert len(record) == 1
    assert record[0]["body"]["messages"][0]["content"] == content


def test_refused_request_is_recorded_with_its_body_and_error(client, port):
    with pytest.raises(openai.BadRequestError):
        stream(client, "refused body", temperature=3)

    record = record_for(port, "refused body")
    assert record["body"]["temperature"] == 3
    assert (record["status"], record["outcome"]) == (400, "error_status")
    assert record["error"]["param"] == "temperature"


# --- Checks of the request, as the real service makes them -------------------


def bad_request(client: openai.OpenAI, **fields: Any) -> openai.BadRequestError:
    """The 400 the server answers a whole request with ``fields``."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, **fields)
    return caught.value


def test_every_role_and_content_shape_is_accepted(client):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at these"},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{png}"},
                },
                {
                    "type": "image_url",
                    "image_url": {"url": "http://example.com/a.jpg", "detail": "low"},
                },
            ],
        },
        {"role": "assistant", "content": "two images", "name": "helper"},
        {"role": "user", "content": "and now?"},
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages)

    assert completion.choices[0].message.content == "".join(build_reply(messages, 30))


def test_unknown_role_is_refused_naming_it(client):
    error = bad_request(client, messages=[{"role": "wizard", "content": "hi"}])

    assert error.param == "messages[0].role"
    assert "'wizard'" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,not*base64",
        "data:image/png;base64,",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,aGVsbG8=",
        "ftp://example.com/a.png",
        "https://",
        "just words",
    ],
)
def test_malformed_image_url_is_refused_naming_the_param(client, url):
    content = [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    error = bad_request(client, messages=[{"role": "user", "content": content}])

    assert error.param == "messages[0].content[1].image_url.url"
    assert error.code == "invalid_value"


def test_image_in_a_system_message_is_refused(client):
    part = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    error = bad_request(client, messages=[{"role": "system", "content": [part]}])

    assert error.param == "messages[0].content[0].type"


CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (  # a tool result with nothing asked before it
            [ask("q")[0], {"role": "tool", "tool_call_id": "call_1", "content": "1"}],
            "messages[1].role",
        ),
        (  # answering a call that was not made
            [
                ask("q")[0],
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_2", "content": "1"},
            ],
            "messages[2].tool_call_id",
        ),
        (  # a call left unanswered
            [
                ask("q")[0],
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                ask("go on")[0],
            ],
            "messages[1].role",
        ),
        (  # no tool_call_id at all
            [
                ask("q")[0],
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "content": "1"},
            ],
            "messages[2].tool_call_id",
        ),
        (  # no content without calls
            [ask("q")[0], {"role": "assistant", "content": None}, ask("r")[0]],
            "messages[1].content",
        ),
    ],
)
def test_tool_messages_must_answer_the_calls_just_made(client, messages, param):
    assert bad_request(client, messages=messages).param == param


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        (
            [{"type": "function", "function": {"description": "x"}}],
            "tools[0].function.name",
        ),
        ([{"type": "retrieval", "function": {"name": "x"}}], "tools[0].type"),
        (
            [{"type": "function", "function": {"name": "has space"}}],
            "tools[0].function.name",
        ),
    ],
)
def test_bad_tools_are_refused_naming_the_field(client, tools, param):
    assert bad_request(client, messages=ask("t"), tools=tools).param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema.name",
        ),
        ({"n": 2}, "n"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ],
)
def test_bad_fields_are_refused_naming_them(client, fields, param):
    assert bad_request(client, messages=ask("f"), **fields).param == param


# --- Tool calls -----------------------------------------------------------------


def tool(name: str) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOLS = [tool("get_weather"), tool("get_time")]


def tool_deltas(chunks: list[ChatCompletionChunk]) -> list[list[Any]]:
    """The ``delta.tool_calls`` list of each chunk that has one."""
    return [
        c.choices[0].delta.tool_calls
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]


def merged_calls(deltas: list[list[Any]]) -> list[dict[str, str]]:
    """Fragments merged per index, as OpenAI's clients do."""
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for fragment in delta:
            call = calls.setdefault(fragment.index, {"arguments": ""})
            if fragment.id:
                call["id"] = fragment.id
            if fragment.function.name:
                call["name"] = fragment.function.name
            call["arguments"] += fragment.function.arguments or ""
    return [calls[index] for index in sorted(calls)]


def test_tool_calls_stream_in_openai_shape_one_call_after_another(client):
    prompt = "weather please [[tool_calls:3]] [[tokens:0]]"
    chunks = list(stream(client, prompt, tools=TOOLS))

    expected = build_tool_calls(ask("weather please"), TOOLS, 3)
    assert [c["name"] for c in expected] == ["get_weather", "get_time", "get_weather"]
    deltas = tool_deltas(chunks)
    assert all(len(delta) == 1 for delta in deltas)
    opening = [d[0] for d in deltas if d[0].id]
    assert [(o.index, o.id, o.type, o.function.name) for o in opening] == [
        (i, call["id"], "function", call["name"]) for i, call in enumerate(expected)
    ]
    assert all(o.function.arguments == "" for o in opening)
    fragments = [d[0] for d in deltas if not d[0].id]
    assert all(f.function.name is None and f.type is None for f in fragments)
    assert all(0 < len(f.function.arguments) <= 5 for f in fragments)
    assert [d[0].index for d in deltas] == sorted(d[0].index for d in deltas)
    assert merged_calls(deltas) == expected
    assert content_chunks(chunks) == []
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


def test_openai_stream_helper_assembles_the_calls(client):
    prompt = "assemble [[tool_calls:2]] [[tokens:0]]"
    with client.chat.completions.stream(
        model=MODEL, messages=ask(prompt), tools=TOOLS
    ) as events:
        final = events.get_final_completion()

    message = final.choices[0].message
    expected = build_tool_calls(ask("assemble"), TOOLS, 2)
    assert [
        (c.id, c.function.name, c.function.arguments) for c in message.tool_calls
    ] == [(c["id"], c["name"], c["arguments"]) for c in expected]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_call_arguments_are_json_with_non_ascii_and_an_escaped_quote():
    calls = build_tool_calls(ask("Weather in Paris?"), None, 2)

    assert [c["name"] for c in calls] == ["tool_0", "tool_1"]
    assert len({c["id"] for c in calls}) == 2
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c["id"]) for c in calls)
    first = calls[0]["arguments"]
    assert "Zürich" in first and "東京" in first  # as characters, not \\u escapes
    assert '\\"' in first
    arguments = json.loads(first)
    assert arguments["query"]["text"] == "Weather in Paris"
    assert '"' in arguments["query"]["note"]
    assert calls == build_tool_calls(ask("Weather in Paris?"), None, 2)
    assert calls != build_tool_calls(ask("Weather in Rome?"), None, 2)


def test_whole_completion_carries_the_calls_and_null_content(client):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ask("whole calls [[tool_calls:2]] [[tokens:0]]"),
        tools=TOOLS,
    )

    message = completion.choices[0].message
    expected = build_tool_calls(ask("whole calls"), TOOLS, 2)
    assert message.content is None
    assert [
        (c.id, c.type, c.function.name, c.function.arguments)
        for c in message.tool_calls
    ] == [(c["id"], "function", c["name"], c["arguments"]) for c in expected]
    assert completion.choices[0].finish_reason == "tool_calls"


def test_content_comes_before_the_calls(client):
    chunks = list(stream(client, "say then call [[tool_calls:1]] [[tokens:4]]"))

    kinds = [
        "text" if content_chunks([c]) else "call"
        for c in chunks
        if content_chunks([c]) or tool_deltas([c])
    ]
    assert kinds[:4] == ["text"] * 4 and set(kinds[4:]) == {"call"}
    assert text_of(chunks) == "".join(build_reply(ask("say then call"), 4))
    assert chunks[-1].usage.completion_tokens == 4 + tool_tokens(
        build_tool_calls(ask("say then call"), None, 1)
    )


def test_ollama_style_sends_each_call_whole_at_index_zero(client):
    prompt = "ollama [[tool_calls:3]] [[tool_style:ollama]] [[tokens:0]]"
    deltas = tool_deltas(list(stream(client, prompt, tools=TOOLS)))

    expected = build_tool_calls(ask("ollama"), TOOLS, 3)
    assert [len(d) for d in deltas] == [1, 1, 1]
    assert [
        (d[0].index, d[0].id, d[0].function.name, d[0].function.arguments)
        for d in deltas
    ] == [(0, c["id"], c["name"], c["arguments"]) for c in expected]


def test_batched_style_opens_every_call_then_interleaves_fragments(client):
    prompt = "batched [[tool_calls:3]] [[tool_style:batched]] [[tokens:0]]"
    deltas = tool_deltas(list(stream(client, prompt, tools=TOOLS)))

    expected = build_tool_calls(ask("batched"), TOOLS, 3)
    assert [(f.index, f.id) for f in deltas[0]] == [
        (i, c["id"]) for i, c in enumerate(expected)
    ]
    assert [f.index for f in deltas[1]] == [0, 1, 2]
    assert [f.index for f in deltas[2]] == [2, 1, 0]
    assert merged_calls(deltas) == expected


def sse_events(port: int, body: dict[str, Any]) -> list[bytes]:
    """The data of each HTTP chunk of a raw streamed answer to ``body``."""
    data = json.dumps({"model": MODEL, "stream": True, **body}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(data)
    )
    return http_chunks(raw_http(port, head + data).partition(b"\r\n\r\n")[2])


def test_split_utf8_cuts_each_event_inside_a_character(port):
    prompt = "split [[tool_calls:2]] [[tool_style:split_utf8]] [[tokens:0]]"
    chunks = sse_events(port, {"messages": ask(prompt), "tools": TOOLS})

    events: list[list[bytes]] = [[]]  # the HTTP chunks of each SSE event
    for chunk in chunks:
        events[-1].append(chunk)
        if chunk.endswith(b"\n\n"):
            events.append([])
    calls = [e for e in events if b'"tool_calls":[' in b"".join(e)]
    assert calls and all(len(parts) == 2 for parts in calls)
    assert all(len(e) == 1 for e in events[:-1] if e not in calls)
    cut_inside = [first for first, _ in calls if not is_utf8(first)]
    with_non_ascii = [e for e in calls if not b"".join(e).isascii()]
    assert len(cut_inside) == len(with_non_ascii) >= 4  # ü, 東, 京 ...
    arguments: dict[int, str] = {}
    for first, second in calls:
        data = json.loads((first + second).decode().removeprefix("data: "))
        for call in data["choices"][0]["delta"]["tool_calls"]:
            arguments[call["index"]] = (
                arguments.get(call["index"], "") + call["function"]["arguments"]
            )
    expected = build_tool_calls(ask("split"), TOOLS, 2)
    assert [arguments[0], arguments[1]] == [c["arguments"] for c in expected]


def is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_split_utf8_fragments_cut_inside_json_strings(client):
    prompt = "inside strings [[tool_calls:1]] [[tool_style:split_utf8]] [[tokens:0]]"
    deltas = tool_deltas(list(stream(client, prompt)))

    text, inside = "", 0
    for delta in deltas[1:]:
        text += delta[0].function.arguments
        # An odd number of unescaped quotes so far: the cut is inside a string.
        inside += len(re.findall(r'(?<!\\)"', text)) % 2
    assert inside >= 3
    assert text == build_tool_calls(ask("inside strings"), None, 1)[0]["arguments"]


def test_tool_results_get_a_text_answer_ending_the_loop(client):
    prompt = "loop [[tool_calls:3]] [[tokens:5]]"
    first = client.chat.completions.create(
        model=MODEL, messages=ask(prompt), tools=TOOLS
    )
    message = first.choices[0].message
    messages = [
        *ask(prompt),
        message.model_dump(include={"role", "content", "tool_calls"}),
        *(
            {"role": "tool", "tool_call_id": call.id, "content": f"{n} C"}
            for n, call in enumerate(message.tool_calls)
        ),
    ]
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOLS, stream=True
        )
    )
    whole = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)

    assert len(message.tool_calls) == 3
    assert tool_deltas(chunks) == []
    # The prompt's [[tokens:5]] still governs the turn; the text is new.
    answer = "".join(build_reply(messages, 5))
    assert answer != message.content == "".join(build_reply(ask(prompt), 5))
    assert text_of(chunks) == answer
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert whole.choices[0].message.content == answer
    assert whole.choices[0].message.tool_calls is None
    assert whole.choices[0].finish_reason == "stop"


def test_tool_choice_and_parallel_tool_calls_take_effect(client):
    prompt = "choose [[tool_calls:3]] [[tokens:0]]"
    forced = {"type": "function", "function": {"name": "get_time"}}

    none = client.chat.completions.create(
        model=MODEL, messages=ask(prompt), tools=TOOLS, tool_choice="none"
    )
    named = client.chat.completions.create(
        model=MODEL, messages=ask(prompt), tools=TOOLS, tool_choice=forced
    )
    single = client.chat.completions.create(
        model=MODEL, messages=ask(prompt), tools=TOOLS, parallel_tool_calls=False
    )

    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason == "stop"
    assert {c.function.name for c in named.choices[0].message.tool_calls} == {
        "get_time"
    }
    assert len(single.choices[0].message.tool_calls) == 1


def test_max_tokens_too_small_for_the_calls_makes_none(client):
    chunks = list(stream(client, "no room [[tool_calls:2]] [[tokens:3]]", max_tokens=6))

    assert tool_deltas(chunks) == []
    assert len(content_chunks(chunks)) == 3
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 3


def test_close_after_counts_tool_call_chunks_after_the_content(client):
    prompt = "drop mid call [[tokens:2]] [[tool_calls:1]] [[close_after:5]]"
    chunks, error = read_until_error(stream(client, prompt))

    assert type(error) is openai.APIConnectionError
    assert len(content_chunks(chunks)) == 2
    assert len(tool_deltas(chunks)) == 3  # the opening and two fragments


# --- Returned fields: logprobs, refusal, usage details, fingerprint ------------


def test_logprobs_come_with_each_answer_chunk(client):
    chunks = list(
        stream(client, "probable [[tokens:6]]", logprobs=True, top_logprobs=2)
    )

    reply = build_reply(ask("probable"), 6)
    expected = token_logprobs(reply, 2)
    carried = [c.choices[0].logprobs for c in content_chunks(chunks)]
    assert [[e.model_dump() for e in lp.content] for lp in carried] == [
        [entry] for entry in expected
    ]
    assert all(len(entry["top_logprobs"]) == 2 for entry in expected)
    assert expected[0]["top_logprobs"][0]["token"] == reply[0]
    assert all(entry["logprob"] < 0 for entry in expected)
    assert expected[1]["bytes"] == list(reply[1].encode())
    others = [c for c in chunks if c.choices and not content_chunks([c])]
    assert all(c.choices[0].logprobs is None for c in others)


def test_whole_completion_carries_logprobs_without_top_by_default(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=ask("probable whole [[tokens:4]]"), logprobs=True
    )

    logprobs = completion.choices[0].logprobs
    expected = token_logprobs(build_reply(ask("probable whole"), 4), 0)
    assert [e.model_dump() for e in logprobs.content] == expected
    assert all(entry["top_logprobs"] == [] for entry in expected)


def test_no_logprobs_unless_asked(client):
    chunks = list(stream(client, "plain probs [[tokens:3]]"))

    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)


def test_refusal_streams_in_delta_refusal_with_null_content(client):
    chunks = list(stream(client, "refuse [[refusal]] [[tokens:5]]"))

    pieces = [
        c.choices[0].delta.refusal
        for c in chunks
        if c.choices and c.choices[0].delta.refusal
    ]
    assert pieces == build_reply(ask("refuse"), 5)
    assert text_of(chunks) == ""
    assert chunks[-2].choices[0].finish_reason == "stop"

    whole = client.chat.completions.create(
        model=MODEL, messages=ask("refuse [[refusal]] [[tokens:5]]")
    )
    assert whole.choices[0].message.refusal == "".join(pieces)
    assert whole.choices[0].message.content is None


def test_cached_tokens_and_fingerprint(client):
    chunks = list(stream(client, "cache me [[cached:4]]"))

    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 4
    assert chunks[-1].usage.prompt_tokens >= 4
    assert {c.system_fingerprint for c in chunks} == {"fp_test"}
    whole = client.chat.completions.create(
        model=MODEL, messages=ask("cache me [[cached:2048]]")
    )
    assert whole.system_fingerprint == "fp_test"
    assert whole.usage.prompt_tokens_details.cached_tokens == 2048
    assert whole.usage.prompt_tokens == 2048


def test_usage_has_no_cached_details_unless_asked(client):
    chunks = list(stream(client, "uncached"))

    assert chunks[-1].usage.prompt_tokens_details is None


@pytest.mark.parametrize(
    ("prompt", "max_tokens"),
    [
        ("reason [[reasoning:8]]", None),
        ("reason [[reasoning:8]]", 3),
        ("reason [[reasoning:8]]", 8),
        ("reason [[reasoning:8]]", 10),
        ("reason [[reasoning:8]] [[tokens:0]]", None),
        ("reason [[reasoning:5]] [[tool_calls:2]] [[tokens:0]]", None),
        ("reason [[reasoning:8]] [[reasoning_field:think]]", 5),
        ("reason [[reasoning:8]] [[reasoning_field:think]] [[usage_in_choice]]", None),
    ],
)
def test_reasoning_tokens_never_exceed_completion_tokens(client, prompt, max_tokens):
    options = {} if max_tokens is None else {"max_tokens": max_tokens}
    usage = list(stream(client, prompt, **options))[-1].usage
    whole = client.chat.completions.create(model=MODEL, messages=ask(prompt), **options)

    for counted in (usage, whole.usage):
        reasoning = counted.completion_tokens_details.reasoning_tokens
        assert 0 < reasoning <= counted.completion_tokens
        assert counted.total_tokens == counted.prompt_tokens + counted.completion_tokens


# --- Request fields that take effect -------------------------------------------


def test_reject_param_answers_openai_unrecognized_argument(client, port):
    with pytest.raises(openai.BadRequestError) as caught:
        stream(client, "no seeds [[reject_param:seed]]", seed=7)

    assert caught.value.body == {
        "message": "Unrecognized request argument supplied: seed",
        "type": "invalid_request_error",
        "param": "seed",
        "code": None,
    }
    assert text_of(list(stream(client, "no seeds here [[reject_param:seed]]")))


def test_reject_param_can_name_several_fields(client):
    prompt = "picky [[reject_param:seed]] [[reject_param:top_p]]"
    with pytest.raises(openai.BadRequestError, match="supplied: top_p"):
        stream(client, prompt, top_p=0.5)


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_cuts_the_answer_before_the_first_stop_sequence(client, as_list):
    reply = "".join(build_reply(ask("stop here"), 30))
    word = reply.split()[8]
    stop = ["zzz", word] if as_list else word
    chunks = list(stream(client, "stop here", stop=stop))
    whole = client.chat.completions.create(
        model=MODEL, messages=ask("stop here"), stop=stop
    )

    expected = reply[: reply.index(word)]
    assert text_of(chunks) == expected
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "stop"


def test_stop_inside_a_word_cuts_the_piece(client):
    reply = build_reply(ask("cut inside"), 30)
    stop = reply[5][3:6]
    expected = "".join(reply)[: "".join(reply).index(stop)]
    chunks = list(stream(client, "cut inside", stop=stop))

    assert text_of(chunks) == expected
    assert chunks[-1].usage.completion_tokens == len(content_chunks(chunks))


def test_stop_that_never_occurs_changes_nothing(client):
    chunks = list(stream(client, "no stop", stop=["qqqq"]))

    assert text_of(chunks) == "".join(build_reply(ask("no stop"), 30))


def test_seed_chooses_the_filler_words(client):
    def answer(seed: int | None) -> str:
        options = {} if seed is None else {"seed": seed}
        return text_of(list(stream(client, "seeded", **options)))

    assert answer(5) == answer(5) == "".join(build_reply(ask("seeded"), 30, seed=5))
    assert answer(5) != answer(6)
    assert answer(None) == "".join(build_reply(ask("seeded"), 30))


def test_json_object_answer_is_a_json_object(client):
    chunks = list(
        stream(client, "as json [[tokens:6]]", response_format={"type": "json_object"})
    )

    text = text_of(chunks)
    assert json.loads(text) == {"answer": "".join(build_reply(ask("as json"), 6))}
    assert len(content_chunks(chunks)) > 3


def test_parse_with_a_pydantic_model_gets_a_matching_object(client, port):
    from pydantic import BaseModel

    class Forecast(BaseModel):
        city: str
        temperature: float
        days: int
        sunny: bool
        tags: list[str]

    completion = client.chat.completions.parse(
        model=MODEL, messages=ask("forecast marker"), response_format=Forecast
    )

    forecast = completion.choices[0].message.parsed
    assert isinstance(forecast, Forecast)
    assert len(forecast.tags) == 3 and all(forecast.tags)
    sent = record_for(port, "forecast marker")["body"]["response_format"]
    assert sent["type"] == "json_schema"
    assert completion.choices[0].message.content == build_json_reply(
        ask("forecast marker"), sent, 30
    )


def test_json_schema_follows_refs_enums_and_nesting():
    schema = {
        "type": "object",
        "properties": {
            "place": {"$ref": "#/$defs/Place"},
            "unit": {"enum": ["C", "F"]},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "scores": {"type": "array", "items": {"type": "integer"}, "minItems": 4},
        },
        "$defs": {
            "Place": {"type": "object", "properties": {"name": {"type": "string"}}}
        },
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": schema},
    }

    value = json.loads(build_json_reply(ask("refs"), response_format, 30))
    assert set(value) == {"place", "unit", "note", "scores"}
    assert isinstance(value["place"]["name"], str)
    assert value["unit"] == "C"
    assert isinstance(value["note"], str)
    assert len(value["scores"]) == 4 and all(
        isinstance(s, int) for s in value["scores"]
    )
