"""The OpenAI-compatible HTTP transport: the real ``openai`` package (sync and async),
``requests`` reading the stream as it comes, resume with ``Last-Event-ID``, stop on
disconnect, OpenAI-shaped errors, and one set of limits shared with Socket.IO."""

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests

from .clients import metric, sse_events
from .conftest import (
    DEFAULT_ASYNC_MODE,
    Recorder,
    Relay,
    relay_env,
    upstream_reasoning,
    upstream_text,
    wait_until,
)


def client_for(relay: Relay, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=relay.url + "/v1", api_key=options.pop("api_key", "unused"), **options
    )


def post(relay: Relay, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    return requests.post(
        relay.url + "/v1/chat/completions", json=body, timeout=30, **kwargs
    )


def start_and_cut(url: str, prompt: str, events: int) -> tuple[list, str, str]:
    """Start a ``background`` stream, read ``events`` events and drop the connection:
    (the events held, the stream's id, its resume token)."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "background": True,
    }
    response = requests.post(
        url + "/v1/chat/completions", json=body, stream=True, timeout=30
    )
    reader = sse_events(response)
    held = [next(reader) for _ in range(events)]
    response.close()
    headers = response.headers
    return held, headers["Chatstream-Stream-Id"], headers["Chatstream-Resume-Token"]


def resume_rest(url: str, stream_id: str, token: str, held: list) -> list:
    """Resume a stream after the last event ``held`` (the token in its header) and
    read it to the end: the events after, whose ids go on from the held ones."""
    resumed = requests.get(
        f"{url}/v1/chat/completions/{stream_id}/events",
        headers={
            "Last-Event-ID": str(held[-1]["id"]),
            "Chatstream-Resume-Token": token,
        },
        stream=True,
        timeout=30,
    )
    assert resumed.status_code == 200
    rest = list(sse_events(resumed))
    ids = [e["id"] for e in held + rest if "id" in e]
    assert ids == list(range(len(ids)))
    return rest


def answer_text(events: list[dict[str, Any]], field: str = "content") -> str:
    return "".join(
        event["data"]["choices"][0]["delta"].get(field, "")
        for event in events
        if event["data"] != "[DONE]" and event["data"].get("choices")
    )


# -- the openai package --------------------------------------------------------------


def test_openai_package_streams_the_exact_answer_with_usage(relay):
    prompt = f"http stream {relay.async_mode} [[tokens:12]]"
    stream = client_for(relay).chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == upstream_text(prompt, 12)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.total_tokens == (
        chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.model for c in chunks} == {"test-model"}


def test_async_openai_package_streams_the_exact_answer(relay):
    prompt = f"http async {relay.async_mode} [[tokens:9]]"

    async def run() -> tuple[str, str | None]:
        client = openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="unused")
        stream = await client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        )
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        await client.close()
        return text, finish

    # On a thread of its own: an event loop may be running on this one (Playwright's).
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(asyncio.run, run()).result()
    assert result == (upstream_text(prompt, 9), "stop")


def test_without_stream_the_same_text_comes_whole(relay):
    prompt = f"http whole {relay.async_mode} [[tokens:7]]"
    completion = client_for(relay).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": prompt}]
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == upstream_text(prompt, 7)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 7


def test_reasoning_passes_through_as_reasoning_content(relay):
    prompt = f"http reasoning {relay.async_mode} [[reasoning:5]] [[tokens:4]]"
    response = post(
        relay,
        {"messages": [{"role": "user", "content": prompt}], "stream": True},
        stream=True,
    )
    events = list(sse_events(response))
    assert answer_text(events, "reasoning_content") == upstream_reasoning(prompt, 5)
    assert answer_text(events, "content") == upstream_text(prompt, 4)
    whole = client_for(relay).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": prompt}]
    )
    assert whole.choices[0].message.content == upstream_text(prompt, 4)
    assert whole.choices[0].message.model_extra["reasoning_content"] == (
        upstream_reasoning(prompt, 5)
    )
    assert whole.usage.completion_tokens_details.reasoning_tokens == 5


def test_demo_model_answers_over_http_as_over_socketio(demo_server):
    prompt = "What is the demo model for?"
    socketio_client = Recorder(demo_server.url)
    try:
        assert socketio_client.chat("s", prompt)["ok"]
        assert socketio_client.wait_end("s")[0] == "done"
        expected = socketio_client.text("s")
    finally:
        socketio_client.close()
    stream = client_for(demo_server).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": prompt}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == expected


# -- a stream read as it comes ---------------------------------------------------------


def test_requests_iter_content_gets_chunks_while_the_model_still_writes(
    relay, upstream
):
    marker = f"progressive {relay.async_mode} [[tokens:400]] [[tps:40]]"
    body = {"messages": [{"role": "user", "content": marker}], "stream": True}
    with post(relay, body, stream=True) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(response)
        first = next(events)
        # The first chunk is here while the model has 10 s of answer left to write.
        assert first["id"] == 0
        assert upstream.find(marker)["outcome"] == "streaming"
        assert first["data"]["choices"][0]["delta"]["content"] == upstream_text(
            marker, 400, first=1
        )


def test_a_client_that_disconnects_stops_the_upstream_stream(relay, upstream):
    marker = f"http leaves {relay.async_mode} [[tokens:2000]] [[tps:40]]"
    body = {"messages": [{"role": "user", "content": marker}], "stream": True}
    response = post(relay, body, stream=True)
    events = sse_events(response)
    for _ in range(3):
        next(events)
    token = response.headers["Chatstream-Resume-Token"]
    stream_id = response.headers["Chatstream-Stream-Id"]
    response.close()
    record = upstream.wait_outcome(marker, timeout=30)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < 2000
    # Stopped as by ``stop``: a resume reads what was sent, then the cancellation.
    resumed = requests.get(
        f"{relay.url}/v1/chat/completions/{stream_id}/events",
        params={"token": token},
        stream=True,
        timeout=30,
    )
    events = list(sse_events(resumed))
    assert events[-1]["data"] == "[DONE]"
    finish = [e for e in events if e["data"] != "[DONE]" and e["data"]["choices"]]
    assert finish[-1]["data"]["choices"][0]["finish_reason"] == "cancelled"
    text = answer_text(events)
    assert len(text) > 0 and upstream_text(marker, 2000).startswith(text)


def test_resume_with_last_event_id_gets_the_exact_rest(relay):
    prompt = f"http resume {relay.async_mode} [[tokens:40]] [[tps:50]]"
    held, stream_id, token = start_and_cut(relay.url, prompt, events=5)
    rest = resume_rest(relay.url, stream_id, token, held)
    assert answer_text(held + rest) == upstream_text(prompt, 40)
    # The end as a stream asking for usage has it: the finish, the usage, [DONE].
    assert rest[-3]["data"]["choices"][0]["finish_reason"] == "stop"
    assert rest[-2]["data"]["usage"]["completion_tokens"] == 40
    assert rest[-1]["data"] == "[DONE]"


def test_a_wrong_resume_token_gets_403_and_nothing_else(relay):
    prompt = f"http wrong token {relay.async_mode} [[tokens:5]]"
    body = {"messages": [{"role": "user", "content": prompt}], "stream": True}
    response = post(relay, body, stream=True)
    list(sse_events(response))
    stream_id = response.headers["Chatstream-Stream-Id"]
    refused = requests.get(
        f"{relay.url}/v1/chat/completions/{stream_id}/events",
        params={"token": "not-the-token"},
        timeout=30,
    )
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.json()["error"]["code"] == "resume_denied"
    assert "data:" not in refused.text


def test_an_id_is_resumable_only_over_its_own_transport(relay, connect):
    sio = connect()
    ack = sio.chat("sio-one", f"sio side {relay.async_mode} [[tokens:4]]")
    assert sio.wait_end("sio-one")[0] == "done"
    refused = requests.get(
        f"{relay.url}/v1/chat/completions/sio-one/events",
        params={"token": ack["resume_token"]},
        timeout=30,
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "resume_denied"
    response = post(
        relay,
        {
            "messages": [{"role": "user", "content": "http side [[tokens:4]]"}],
            "stream": True,
        },
        stream=True,
    )
    list(sse_events(response))
    ack = sio.call(
        "resume",
        {
            "id": response.headers["Chatstream-Stream-Id"],
            "token": response.headers["Chatstream-Resume-Token"],
            "after": -1,
        },
    )
    assert ack["ok"] is False and ack["error"]["code"] == "resume_denied"


def test_http_and_socketio_clients_at_once_each_get_their_own_text(relay, connect):
    sio_clients = [connect() for _ in range(3)]
    prompts = [f"mixed {relay.async_mode} {n} [[tokens:15]]" for n in range(6)]
    for n, client in enumerate(sio_clients):
        assert client.chat(f"m{n}", prompts[n])["ok"]
    responses = [
        post(
            relay,
            {"messages": [{"role": "user", "content": p}], "stream": True},
            stream=True,
        )
        for p in prompts[3:]
    ]
    for n, response in enumerate(responses):
        events = list(sse_events(response))
        assert answer_text(events) == upstream_text(prompts[3 + n], 15)
        assert {e["data"]["id"] for e in events if e["data"] != "[DONE]"} == {
            response.headers["Chatstream-Stream-Id"]
        }
    for n, client in enumerate(sio_clients):
        assert client.wait_end(f"m{n}")[0] == "done"
        assert client.text(f"m{n}") == upstream_text(prompts[n], 15)
        assert {data["id"] for _, data in client.events} == {f"m{n}"}
    assert metric(relay, "chat_requests_total", 'transport="http"') >= 3


# -- errors ----------------------------------------------------------------------------


BAD_BODIES = [
    ({"messages": "hello"}, "messages"),
    ({}, "messages"),
    (
        {
            "messages": [
                {"role": "user", "content": "y"},
                {"role": "system", "content": "x"},
            ]
        },
        "messages[1].role",
    ),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    (
        {"messages": [{"role": "user", "content": "x", "reasoning_content": "y"}]},
        "messages[0].reasoning_content",
    ),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        "temperature",
    ),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    (
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
        "max_tokens",
    ),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content[0].image_url",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "messages[0].content[0].type",
    ),
    (
        {"messages": [{"role": "user", "content": "x"}], "stream_options": 1},
        "stream_options",
    ),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_every_bad_body_gets_400_naming_the_field(demo_server, body, field):
    response = post(demo_server, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(field + ": ")
    assert error["param"] == field


def test_a_body_that_is_not_json_gets_400(demo_server):
    response = requests.post(
        demo_server.url + "/v1/chat/completions", data=b"{not json", timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("body: ")


def test_an_unknown_model_gets_404_through_the_openai_package(demo_server):
    with pytest.raises(openai.NotFoundError) as raised:
        client_for(demo_server).chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.body["code"] == "model_not_found"
    assert "'demo'" in raised.value.body["message"]


@pytest.mark.parametrize(
    ("directive", "error", "code"),
    [
        ("[[status:429]]", openai.RateLimitError, "upstream_rate_limited"),
        ("[[status:503]]", openai.InternalServerError, "upstream_unavailable"),
        ("[[status:400]]", openai.BadRequestError, "upstream_error"),
    ],
)
def test_an_upstream_failure_before_any_text_gets_its_status(
    relay, directive, error, code
):
    client = client_for(relay, max_retries=0)
    with pytest.raises(error) as raised:
        client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": f"fails {directive}"}],
            stream=True,
        )
    assert raised.value.body["code"] == code
    assert UPSTREAM_KEY_FRAGMENT not in str(raised.value.body)
    # The status and our own words; the upstream's text ("Injected error: …") is
    # for the log.
    assert f"(HTTP {raised.value.status_code})" in raised.value.body["message"]
    assert "Injected" not in str(raised.value.body)


UPSTREAM_KEY_FRAGMENT = "sk-test-"


def test_a_failure_mid_stream_is_the_last_event_and_the_sdk_raises_it(relay):
    prompt = f"mid-stream {relay.async_mode} [[tokens:20]] [[error_after:3]]"
    stream = client_for(relay, max_retries=0).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": prompt}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == upstream_text(prompt, 20, first=3)
    assert raised.value.body["code"] == "upstream_unavailable"
    assert raised.value.body["message"] == "the upstream failed mid-answer"


# -- auth, origins and limits, shared with Socket.IO -----------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_session, upstream) -> Iterator[Relay]:
    """A relay with tokens, one stream per user and three chats a minute."""
    server = Relay(
        tmp_session,
        DEFAULT_ASYNC_MODE,
        relay_env(
            upstream,
            AUTH_TOKENS="alpha-token,beta-token,gamma-token,delta-token",
            MAX_STREAMS_PER_IDENTITY="1",
            CHATS_PER_MINUTE="3",
            CORS_ALLOWED_ORIGINS="https://app.example",
        ),
    )
    yield server
    server.quit()


def test_a_bearer_token_is_required_and_checked(guarded):
    body = {"messages": [{"role": "user", "content": "auth [[tokens:2]]"}]}
    missing = post(guarded, body)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    wrong = post(guarded, body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client_for(guarded, api_key="nope").models.list()
    models = client_for(guarded, api_key="alpha-token").models.list()
    assert [m.id for m in models.data] == ["test-model", "other-model"]
    whole = client_for(guarded, api_key="alpha-token").chat.completions.create(
        model="test-model", messages=body["messages"]
    )
    assert whole.choices[0].message.content == upstream_text(
        body["messages"][0]["content"], 2
    )


def test_origins_follow_the_socketio_rule(guarded):
    body = {"messages": [{"role": "user", "content": "origin [[tokens:2]]"}]}
    auth = {"Authorization": "Bearer alpha-token"}
    foreign = post(guarded, body, headers={**auth, "Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "forbidden_origin"
    allowed = post(guarded, body, headers={**auth, "Origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Chatstream-Resume-Token" in allowed.headers["Access-Control-Expose-Headers"]


def test_the_stream_limit_counts_both_transports(guarded):
    sio = Recorder(guarded.url, auth={"token": "beta-token"})
    try:
        assert sio.chat("long", "hold the slot [[tokens:2000]] [[tps:40]]")["ok"]
        sio.wait(lambda c: len(c.chunks("long")) >= 1)
        body = {"messages": [{"role": "user", "content": "second [[tokens:2]]"}]}
        busy = post(guarded, body, headers={"Authorization": "Bearer beta-token"})
        assert busy.status_code == 429
        assert busy.json()["error"]["code"] == "busy"
        assert int(busy.headers["Retry-After"]) >= 1
        # Another user is not held back.
        other = post(guarded, body, headers={"Authorization": "Bearer gamma-token"})
        assert other.status_code == 200
    finally:
        sio.close()


def test_the_chat_rate_counts_both_transports(guarded):
    auth = {"Authorization": "Bearer delta-token"}
    sio = Recorder(guarded.url, auth={"token": "delta-token"})
    try:
        # Three chats a minute: two over Socket.IO, one over HTTP...
        body = {"messages": [{"role": "user", "content": "rate [[tokens:1]]"}]}
        for n in range(2):
            assert sio.chat(f"r{n}", "rate one [[tokens:1]]")["ok"]
            assert sio.wait_end(f"r{n}")[0] == "done"
        assert post(guarded, body, headers=auth).status_code == 200
        # ...and the fourth, over HTTP, is refused, as is a fifth over Socket.IO.
        refused = post(guarded, body, headers=auth)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        ack = sio.chat("r9", "rate two [[tokens:1]]")
        assert ack["ok"] is False and ack["error"]["code"] == "rate_limited"
    finally:
        sio.close()
    wait_until(lambda: guarded.health()["live_streams"] == 0, what="no streams")


@pytest.fixture(scope="module")
def any_origin(tmp_session, upstream) -> Iterator[Relay]:
    """A relay that lets a browser at any origin in (``CORS_ALLOWED_ORIGINS=*``)."""
    server = Relay(
        tmp_session,
        DEFAULT_ASYNC_MODE,
        relay_env(upstream, CORS_ALLOWED_ORIGINS="*"),
    )
    yield server
    server.quit()


def test_any_origin_when_the_setting_says_so(any_origin):
    origin = "https://anywhere.example"
    handshake = requests.get(
        any_origin.url + "/socket.io/?EIO=4&transport=polling",
        headers={"Origin": origin},
        timeout=5,
    )
    assert handshake.status_code == 200
    preflight = requests.options(
        any_origin.url + "/v1/chat/completions", headers={"Origin": origin}, timeout=5
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    prompt = "from anywhere [[tokens:5]]"
    client = client_for(any_origin, default_headers={"Origin": origin})
    stream = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": prompt}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == upstream_text(prompt, 5)
