"""The OpenAI test server, driven over real HTTP by the official openai package."""

import itertools
import json
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

from tests.openai_server import build_reply

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
