"""OpenAI's Responses API on the relay: the real ``openai`` package streaming and
whole (exact text, usage, reasoning, a function call round trip), the events in
OpenAI's order with gap-free sequence numbers, ``responses.retrieve`` and a resume
with ``starting_after`` after a cut, the request as the Chat Completions upstream
receives it, errors naming the field, and the Vercel AI SDK's default provider."""

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from .clients import metric, sse_events
from .conftest import (
    ROOT,
    SYSTEM_PROMPT,
    Relay,
    relay_env,
    upstream_reasoning,
    upstream_text,
    wait_until,
)

# The cluster's fixtures (Redis, PostgreSQL, three nodes, nginx), named as
# parameters below.
from .test_cluster import cluster_database, nginx, nodes, redis_server  # noqa: F401
from .test_faithful_relay import PNG_DATA_URL, TOOLS, expected_calls, reply, user

# The functions of test_faithful_relay's TOOLS, as the Responses API writes them.
FLAT_TOOLS = [{"type": "function", **tool["function"]} for tool in TOOLS]
VERCEL_SCRIPT = ROOT / "tests" / "node" / "vercel_stream.mjs"
WEB = ROOT / "client" / "web"


def client_for(relay: Relay, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=relay.url + "/v1",
        api_key=options.pop("api_key", "unused"),
        max_retries=0,
        **options,
    )


def post(relay: Relay, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    return requests.post(relay.url + "/v1/responses", json=body, timeout=30, **kwargs)


def deltas(events: list[Any], kind: str = "response.output_text.delta") -> str:
    """The text of one kind of delta event (SDK objects or raw dicts)."""
    return "".join(_field(e, "delta") for e in events if _field(e, "type") == kind)


def _field(event: Any, name: str) -> Any:
    return event[name] if isinstance(event, dict) else getattr(event, name)


def start_and_cut(url: str, prompt: str, events: int) -> list[dict[str, Any]]:
    """Start a ``background`` stream, read ``events`` events and drop the
    connection: the events held."""
    body = {"model": "test-model", "input": prompt, "stream": True, "background": True}
    response = requests.post(url + "/v1/responses", json=body, stream=True, timeout=30)
    reader = sse_events(response)
    held = [next(reader)["data"] for _ in range(events)]
    response.close()
    return held


# -- streamed and whole --------------------------------------------------------------


def test_a_streamed_response_is_openais_events_with_the_exact_text(relay):
    prompt = f"responses stream {relay.async_mode} [[tokens:12]]"
    events = list(
        client_for(relay).responses.create(
            model="test-model", input=prompt, stream=True
        )
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 12,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    expected = upstream_text(prompt, 12)
    assert deltas(events) == expected
    created, completed = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == []
    assert completed.id == created.id and completed.id.startswith("resp_")
    assert completed.status == "completed"
    assert completed.output_text == expected
    item = events[2].item
    assert {e.item_id for e in events if hasattr(e, "item_id")} == {item.id}
    assert {e.output_index for e in events if hasattr(e, "output_index")} == {0}
    assert events[-4].text == expected and events[-3].part.text == expected
    assert events[-2].item.status == "completed"
    usage = completed.usage
    assert usage.output_tokens == 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert metric(relay, "chat_requests_total", 'transport="responses"') >= 1


def test_without_stream_the_same_text_comes_whole(relay):
    prompt = f"responses whole {relay.async_mode} [[tokens:7]]"
    response = client_for(relay).responses.create(model="test-model", input=prompt)
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == upstream_text(prompt, 7)
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.usage.output_tokens == 7
    assert response.model == "test-model"


def test_reasoning_streams_as_a_reasoning_item_before_the_message(relay):
    prompt = f"responses reasoning {relay.async_mode} [[reasoning:5]] [[tokens:4]]"
    client = client_for(relay)
    events = list(
        client.responses.create(model="test-model", input=prompt, stream=True)
    )
    reasoning = upstream_reasoning(prompt, 5)
    assert deltas(events, "response.reasoning_text.delta") == reasoning
    assert deltas(events) == upstream_text(prompt, 4)
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [e.item.type for e in done] == ["reasoning", "message"]
    assert [e.output_index for e in done] == [0, 1]
    assert done[0].item.content[0].text == reasoning
    completed = events[-1].response
    assert completed.usage.output_tokens_details.reasoning_tokens == 5
    whole = client.responses.create(model="test-model", input=prompt)
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    assert whole.output[0].content[0].text == reasoning
    assert whole.output_text == upstream_text(prompt, 4)


def test_a_function_call_round_trip_with_function_call_output(relay, upstream):
    marker = f"responses tools {relay.async_mode}"
    prompt = f"{marker} Paris Rome [[tokens:4]] [[tool_calls:2]]"
    client = client_for(relay)
    events = list(
        client.responses.create(
            model="test-model", input=prompt, tools=FLAT_TOOLS, stream=True
        )
    )
    first = events[-1].response
    calls = expected_calls(user(prompt), TOOLS, 2)
    made = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in made] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]
    arguments = [
        e.arguments for e in events if e.type == "response.function_call_arguments.done"
    ]
    assert arguments == [c["function"]["arguments"] for c in calls]
    assert first.output_text == reply(user(prompt), 4)
    assert first.status == "completed"

    results = [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"{n} C"}
        for n, c in enumerate(made)
    ]
    final = client.responses.create(
        model="test-model",
        input=[{"role": "user", "content": prompt}, *first.output, *results],
        tools=FLAT_TOOLS,
    )
    conversation = [
        *user(prompt),
        {"role": "assistant", "content": first.output_text, "tool_calls": calls},
        *(
            {"role": "tool", "tool_call_id": c["id"], "content": f"{n} C"}
            for n, c in enumerate(calls)
        ),
    ]
    assert final.output_text == reply(conversation, 4)
    assert [item.type for item in final.output] == ["message"]
    sent = [r for r in upstream.requests() if marker in json.dumps(r["body"])][-1]
    assert sent["body"]["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        *conversation,
    ]


def test_the_request_reaches_the_chat_completions_upstream_translated(relay, upstream):
    marker = f"responses translated {relay.async_mode}"
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = post(
        relay,
        {
            "model": "test-model",
            "instructions": "Answer in French.",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": f"{marker} [[tokens:3]]"},
                        {"type": "input_image", "image_url": PNG_DATA_URL},
                    ],
                }
            ],
            "max_output_tokens": 50,
            "tools": FLAT_TOOLS[:1],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "reasoning": {"effort": "low"},
            "text": {
                "format": {"type": "json_schema", "name": "city", "schema": schema}
            },
            "temperature": 0.5,
            "parallel_tool_calls": False,
            "metadata": {"team": "relay"},
            "top_k": 40,
            "store": False,
        },
    )
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["instructions"] == "Answer in French."
    assert echoed["tools"] == FLAT_TOOLS[:1]
    assert echoed["max_output_tokens"] == 50 and echoed["store"] is False
    body = upstream.find(marker)["body"]
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "system", "content": "Answer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"{marker} [[tokens:3]]"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
            ],
        },
    ]
    assert body["max_completion_tokens"] == 50
    assert body["tools"] == TOOLS[:1]
    assert body["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    assert body["reasoning_effort"] == "low"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema},
    }
    assert body["temperature"] == 0.5 and body["top_k"] == 40
    assert body["parallel_tool_calls"] is False
    assert body["metadata"] == {"team": "relay"}
    for own in ("input", "instructions", "store", "max_output_tokens", "text"):
        assert own not in body


@pytest.mark.parametrize(
    ("directive", "reason"),
    [("[[tokens:40]]", "max_output_tokens"), ("[[finish:content_filter]]", None)],
)
def test_a_cut_answer_is_incomplete_with_its_reason(relay, directive, reason):
    prompt = f"responses incomplete {relay.async_mode} {directive}"
    limit = {"max_output_tokens": 3} if reason else {}
    events = list(
        client_for(relay).responses.create(
            model="test-model", input=prompt, stream=True, **limit
        )
    )
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details.reason == (reason or "content_filter")
    if reason:
        assert deltas(events) == upstream_text(prompt, 40, first=3)
    assert [e.item.status for e in events if e.type == "response.output_item.done"] == [
        "incomplete"
    ]


# -- retrieve and resume --------------------------------------------------------------


def test_retrieve_gives_the_response_as_it_ended(relay):
    prompt = f"responses retrieve {relay.async_mode} [[tokens:6]]"
    client = client_for(relay)
    created = client.responses.create(model="test-model", input=prompt)
    again = client.responses.retrieve(created.id)
    assert again.id == created.id
    assert again.status == "completed"
    assert again.output_text == upstream_text(prompt, 6)
    assert again.output == created.output
    assert again.usage == created.usage


def test_a_resume_with_starting_after_gives_the_exact_rest(relay):
    prompt = f"responses resume {relay.async_mode} [[tokens:40]] [[tps:50]]"
    held = start_and_cut(relay.url, prompt, events=6)
    response_id = held[0]["response"]["id"]
    rest = list(
        client_for(relay).responses.retrieve(
            response_id, stream=True, starting_after=held[-1]["sequence_number"]
        )
    )
    numbers = [e["sequence_number"] for e in held] + [e.sequence_number for e in rest]
    assert numbers == list(range(len(numbers)))
    expected = upstream_text(prompt, 40)
    assert deltas(held) + deltas(rest) == expected
    assert rest[-1].type == "response.completed"
    assert rest[-1].response.output_text == expected
    assert rest[-1].response.usage.output_tokens == 40
    # From the start: every event again, the same ones.
    replayed = list(client_for(relay).responses.retrieve(response_id, stream=True))
    assert [e.sequence_number for e in replayed] == list(range(len(numbers)))
    assert [e.type for e in replayed[6:]] == [e.type for e in rest]
    assert replayed[2].item.id == held[2]["item"]["id"]


def test_background_without_stream_answers_at_once_and_runs_to_the_end(relay, upstream):
    # Three seconds of answer: longer than the relay's resume grace (2 s).
    marker = f"responses background {relay.async_mode} [[tokens:60]] [[tps:20]]"
    client = client_for(relay)
    started = client.responses.create(model="test-model", input=marker, background=True)
    assert started.status == "in_progress" and started.output == []
    assert started.background is True
    # Answered before the model has finished (or even begun).
    sent = [r for r in upstream.requests() if marker in (r["prompt"] or "")]
    assert [r["outcome"] for r in sent] in ([], ["streaming"])
    ended = wait_until(
        lambda: (
            (r := client.responses.retrieve(started.id)).status != "in_progress" and r
        ),
        what="the background response to end",
    )
    assert ended.status == "completed"
    assert ended.output_text == upstream_text(marker, 60)
    assert upstream.find(marker)["outcome"] == "completed"


def test_a_client_that_disconnects_stops_the_generation(relay, upstream):
    marker = f"responses leaves {relay.async_mode} [[tokens:2000]] [[tps:40]]"
    response = post(relay, {"input": marker, "stream": True}, stream=True)
    events = sse_events(response)
    response_id = next(events)["data"]["response"]["id"]
    for _ in range(4):
        next(events)
    response.close()
    record = upstream.wait_outcome(marker, timeout=30)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] < 2000
    stopped = client_for(relay).responses.retrieve(response_id)
    assert stopped.status == "cancelled"
    assert len(stopped.output_text) > 0
    assert upstream_text(marker, 2000).startswith(stopped.output_text)
    replayed = list(client_for(relay).responses.retrieve(response_id, stream=True))
    assert replayed[-1].type == "response.incomplete"
    assert replayed[-1].response.status == "cancelled"


def test_an_unknown_response_id_is_404(relay):
    with pytest.raises(openai.NotFoundError) as raised:
        client_for(relay).responses.retrieve("resp_nothing_here")
    assert raised.value.body["code"] == "not_found"


# -- several nodes, nginx in front ----------------------------------------------------


def test_a_stream_through_nginx_comes_as_it_is_written(
    nginx,  # noqa: F811
    upstream,
    async_mode,
):
    marker = f"responses through nginx {async_mode}"
    prompt = f"{marker} [[tokens:400]] [[tps:40]]"
    body = {"input": prompt, "stream": True}
    with requests.post(
        nginx + "/v1/responses", json=body, stream=True, timeout=30
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = (event["data"] for event in sse_events(response))
        first = next(e for e in events if e["type"] == "response.output_text.delta")
        # Through the proxy while the model had 10 s of answer left to write.
        assert upstream.find(marker)["outcome"] == "streaming"
        assert first["delta"] == upstream_text(prompt, 400, first=1)


def test_a_resume_through_nginx_gives_the_exact_rest(nginx, async_mode):  # noqa: F811
    prompt = f"responses nginx resume {async_mode} [[tokens:30]] [[tps:50]]"
    held = start_and_cut(nginx, prompt, events=5)
    proxied = openai.OpenAI(base_url=nginx + "/v1", api_key="unused", max_retries=0)
    rest = list(
        proxied.responses.retrieve(
            held[0]["response"]["id"],
            stream=True,
            starting_after=held[-1]["sequence_number"],
        )
    )
    assert rest[0].sequence_number == held[-1]["sequence_number"] + 1
    assert deltas(held) + deltas(rest) == upstream_text(prompt, 30)
    assert rest[-1].type == "response.completed"


def test_a_response_resumes_and_is_retrieved_on_other_nodes(nodes):  # noqa: F811
    a, b, c = nodes
    prompt = "responses elsewhere [[tokens:60]] [[tps:60]]"
    held = start_and_cut(a.url, prompt, events=6)
    response_id = held[0]["response"]["id"]
    rest = list(
        client_for(b).responses.retrieve(
            response_id, stream=True, starting_after=held[-1]["sequence_number"]
        )
    )
    numbers = [e["sequence_number"] for e in held] + [e.sequence_number for e in rest]
    assert numbers == list(range(len(numbers)))
    expected = upstream_text(prompt, 60)
    assert deltas(held) + deltas(rest) == expected
    assert rest[-1].response.usage.output_tokens == 60
    # The owner's mirror says it has ended within a flush.
    ended = wait_until(
        lambda: (
            (r := client_for(c).responses.retrieve(response_id)).status == "completed"
            and r
        ),
        what="the response completed on node c",
    )
    assert ended.output_text == expected
    assert ended.output == rest[-1].response.output


# -- errors ---------------------------------------------------------------------------


def test_an_upstream_failure_before_any_text_gets_its_status(relay):
    with pytest.raises(openai.RateLimitError) as raised:
        client_for(relay).responses.create(
            model="test-model", input="fails [[status:429]]", stream=True
        )
    assert raised.value.body["code"] == "upstream_rate_limited"


def test_a_failure_mid_stream_ends_with_response_failed(relay):
    prompt = f"responses mid-stream {relay.async_mode} [[tokens:20]] [[error_after:3]]"
    events = list(
        client_for(relay).responses.create(
            model="test-model", input=prompt, stream=True
        )
    )
    assert deltas(events) == upstream_text(prompt, 20, first=3)
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error.code == "upstream_unavailable"
    assert last.response.error.message == "the upstream failed mid-answer"
    assert events[-2].type == "response.output_item.done"
    assert events[-2].item.status == "incomplete"


BAD_BODIES = [
    ({}, "input"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": "  "}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    (
        {"input": [{"role": "user", "content": "x", "name": "me"}]},
        "input[0].name",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
        "input[0].content[0].type",
    ),
    (
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "ftp://x/y"}],
                }
            ]
        },
        "input[0].content[0].image_url",
    ),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    (
        {"input": [{"type": "function_call_output", "output": "42"}]},
        "input[0].call_id",
    ),
    (
        {
            "input": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y"},
            ]
        },
        "input",
    ),
    ({"input": "x", "instructions": 7}, "instructions"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "x", "tool_choice": {"type": "mcp"}}, "tool_choice"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": 10**6}, "max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": "x", "reasoning": {"effort": 3}}, "reasoning.effort"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "max_tool_calls": 3}, "max_tool_calls"),
    ({"input": "x", "stream": "yes"}, "stream"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "n": 2}, "n"),
    # Anonymous, with no owner cookie: nothing of this caller is kept.
    ({"input": "x", "previous_response_id": "resp_abc"}, "previous_response_id"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_every_bad_body_gets_400_naming_the_field(demo_server, body, field):
    response = post(demo_server, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(field + ": ")
    assert error["param"] == field


def test_an_unknown_model_gets_404_through_the_openai_package(demo_server):
    with pytest.raises(openai.NotFoundError) as raised:
        client_for(demo_server).responses.create(model="gpt-nope", input="hi")
    assert raised.value.body["code"] == "model_not_found"


# -- kept responses: whose they are, and previous_response_id -------------------------


@pytest.fixture(scope="module")
def guarded(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """A relay with tokens: each user's responses are kept in its conversations."""
    server = Relay(
        tmp_session,
        async_mode,
        relay_env(upstream, AUTH_TOKENS="alpha-token,beta-token"),
    )
    yield server
    server.quit()


def test_a_response_is_its_users_alone(guarded):
    with pytest.raises(openai.AuthenticationError):
        client_for(guarded).responses.create(model="test-model", input="x")
    alpha = client_for(guarded, api_key="alpha-token")
    prompt = f"whose response {guarded.async_mode} [[tokens:3]]"
    created = alpha.responses.create(model="test-model", input=prompt)
    assert alpha.responses.retrieve(created.id).output_text == upstream_text(prompt, 3)
    beta = client_for(guarded, api_key="beta-token")
    with pytest.raises(openai.NotFoundError):
        beta.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        list(beta.responses.retrieve(created.id, stream=True))
    with pytest.raises(openai.NotFoundError) as raised:
        beta.responses.create(
            model="test-model", input="mine now?", previous_response_id=created.id
        )
    assert raised.value.body["param"] == "previous_response_id"


def test_previous_response_id_continues_the_kept_conversation(guarded, upstream):
    marker = f"continued {guarded.async_mode}"
    alpha = client_for(guarded, api_key="alpha-token")
    first = alpha.responses.create(
        model="test-model", input=f"{marker} one [[tokens:5]]", instructions="Be brief."
    )
    assert first.store is True and first.conversation.id
    second = alpha.responses.create(
        model="test-model",
        input=f"{marker} two [[tokens:4]]",
        previous_response_id=first.id,
        stream=True,
    )
    completed = list(second)[-1].response
    conversation = [
        *user(f"{marker} one [[tokens:5]]"),
        {"role": "assistant", "content": first.output_text},
        *user(f"{marker} two [[tokens:4]]"),
    ]
    assert completed.output_text == reply(conversation, 4)
    assert completed.previous_response_id == first.id
    assert completed.conversation.id == first.conversation.id
    # The first request's instructions are its own: the second sends none.
    assert upstream.find(f"{marker} two")["body"]["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        *conversation,
    ]


def test_a_function_call_round_trip_on_previous_response_id(guarded, upstream):
    marker = f"kept tools {guarded.async_mode}"
    prompt = f"{marker} Oslo [[tokens:3]] [[tool_calls:2]]"
    alpha = client_for(guarded, api_key="alpha-token")
    first = alpha.responses.create(model="test-model", input=prompt, tools=FLAT_TOOLS)
    made = [item for item in first.output if item.type == "function_call"]
    calls = expected_calls(user(prompt), TOOLS, 2)
    assert [c.call_id for c in made] == [c["id"] for c in calls]
    final = alpha.responses.create(
        model="test-model",
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": c.call_id, "output": f"{n} C"}
            for n, c in enumerate(made)
        ],
        tools=FLAT_TOOLS,
    )
    conversation = [
        *user(prompt),
        {"role": "assistant", "content": first.output_text, "tool_calls": calls},
        *(
            {"role": "tool", "tool_call_id": c["id"], "content": f"{n} C"}
            for n, c in enumerate(calls)
        ),
    ]
    assert final.output_text == reply(conversation, 3)
    sent = [r for r in upstream.requests() if marker in json.dumps(r["body"])][-1]
    assert sent["body"]["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        *conversation,
    ]


def test_store_false_keeps_nothing_to_continue(guarded):
    alpha = client_for(guarded, api_key="alpha-token")
    first = alpha.responses.create(
        model="test-model",
        input=f"unkept {guarded.async_mode} [[tokens:3]]",
        store=False,
    )
    assert first.store is False and first.conversation is None
    with pytest.raises(openai.NotFoundError):
        alpha.responses.create(
            model="test-model", input="and then?", previous_response_id=first.id
        )


def test_a_kept_response_is_read_back_once_its_stream_is_gone(guarded):
    alpha = client_for(guarded, api_key="alpha-token")
    prompt = f"read back {guarded.async_mode} [[reasoning:3]] [[tokens:5]]"
    created = alpha.responses.create(model="test-model", input=prompt)
    wait_until(lambda: guarded.health()["streams"] == 0, what="no stream kept")
    again = alpha.responses.retrieve(created.id)
    assert again.status == "completed"
    assert again.output == created.output
    assert again.usage.output_tokens == created.usage.output_tokens
    replayed = list(alpha.responses.retrieve(created.id, stream=True, starting_after=1))
    assert replayed[0].sequence_number == 2
    assert deltas(replayed) == upstream_text(prompt, 5)
    assert deltas(replayed, "response.reasoning_text.delta") == upstream_reasoning(
        prompt, 3
    )


# -- the Vercel AI SDK ----------------------------------------------------------------


def test_the_vercel_ai_sdks_default_openai_provider_streams_the_exact_text(relay):
    if not (WEB / "node_modules" / "@ai-sdk" / "openai").is_dir():
        pytest.fail("client/web's npm packages are missing: scripts/test.sh installs")
    prompt = f"vercel {relay.async_mode} [[tokens:9]]"
    done = subprocess.run(
        ["node", str(VERCEL_SCRIPT), prompt],
        env={
            "PATH": os.environ["PATH"],
            "OPENAI_BASE_URL": relay.url + "/v1",
            "OPENAI_API_KEY": "unused",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["text"] == upstream_text(prompt, 9)
    assert result["finishReason"] == "stop"
    assert result["outputTokens"] == 9
    assert result["id"].startswith("resp_")
