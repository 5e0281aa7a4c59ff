"""The checks every transport applies to a chat request (in process): what passes
upstream unchanged, and the code and field named for what does not."""

import pytest

from app.chat_request import Limits, check_messages, check_params
from app.errors import ProtocolError

LIMITS = Limits(
    models=["m"],
    default_model="m",
    max_messages=10,
    max_prompt_chars=100,
    max_tokens_cap=50,
)
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def refused(call, *args) -> str:
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    assert caught.value.code == "invalid_request"
    return caught.value.message


def test_every_role_and_tool_shape_passes_unchanged():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Look"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert check_messages(messages, LIMITS) == messages


def test_images_pass_unchanged_and_a_user_message_may_be_an_image_alone():
    part = {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}
    messages = [{"role": "user", "content": [part]}]
    assert check_messages(messages, LIMITS) == messages


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "user", "content": "\ud800"}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}],
            "messages[0].content[0].text",
        ),
        (
            [{"role": "user", "content": [{"type": "audio", "x": 1}]}],
            "messages[0].content[0].type",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:x"}}],
                }
            ],
            "messages[0].content[0].image_url.url",
        ),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
        ([{"role": "user", "content": "x", "reasoning": "y"}], "messages[0].reasoning"),
        ([{"role": "boss", "content": "x"}], "messages[0].role"),
        ([{"role": "assistant", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "  "}], "messages[0].content"),
        ([{"role": "user", "content": "x" * 101}], "messages"),
    ],
)
def test_bad_messages_name_their_field(messages, field):
    assert refused(check_messages, messages, LIMITS).startswith(field + ":")


def test_system_messages_can_be_refused_by_the_operator():
    limits = Limits(**{**LIMITS.__dict__, "client_system_messages": False})
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]
    assert "server sets the system prompt" in refused(check_messages, messages, limits)


def test_unknown_and_known_parameters_pass_unchanged():
    params = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "stop": ["END"],
        "seed": 7,
        "top_p": 0.5,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
        "some_server_extension": {"x": [1, "y"]},
        "max_completion_tokens": 50,
        "n": 1,
    }
    expected = {k: v for k, v in params.items() if k != "n"}
    assert check_params(params, LIMITS) == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"stream": False}, "options.stream"),
        ({"stream_options": {}}, "options.stream_options"),
        ({"model": "m"}, "options.model"),
        ({"n": 2}, "options.n"),
        ({"max_tokens": 51}, "options.max_tokens"),
        ({"max_completion_tokens": True}, "options.max_completion_tokens"),
        ({"temperature": 3}, "options.temperature"),
        ({"stop": ["\ud800"]}, "options.stop[0]"),
    ],
)
def test_owned_and_bad_parameters_name_their_field(params, field):
    message = refused(check_params, params, LIMITS, "options.")
    assert message.startswith(field + ":")


def test_parameters_nested_too_deep_are_refused():
    deep: object = "x"
    for _ in range(40):
        deep = [deep]
    assert "nested more than" in refused(check_params, {"x": deep}, LIMITS)
