"""One accepted request's answer, decided before the first byte goes out: the
reasoning, the answer pieces and tool calls after the cuts (stop, max_tokens),
the finish reason and usage; and the answer as one ``chat.completion``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .directives import Directives
from .replies import (
    build_json_reply,
    build_reasoning,
    build_reply,
    count_prompt_tokens,
    cut_at_stop,
    split_reply,
    token_logprobs,
)
from .tools import build_tool_calls, message_tool_calls, tool_tokens

SYSTEM_FINGERPRINT = "fp_test"


@dataclass
class Completion:
    """Everything one accepted request needs."""

    record: dict[str, Any]
    directives: Directives
    model: str
    reasoning: list[str]  # already cut by max_tokens
    reasoning_cut: bool  # max_tokens ended inside the reasoning
    tokens: list[str]  # the answer: content, or refusal with [[refusal]]
    tool_calls: list[dict[str, str]]  # {"id", "name", "arguments"} each
    finish_reason: str
    prompt_tokens: int
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    ttft: float
    interval: float
    completion_id: str
    created: int
    request_id: str = ""


def plan(
    body: Mapping[str, Any], directives: Directives, reply_tokens: int
) -> dict[str, Any]:
    """The fields of a Completion that depend on the request: what is said."""
    messages, seed = body["messages"], body.get("seed")
    count = directives.tokens if directives.tokens is not None else reply_tokens
    reasoning = build_reasoning(messages, directives.reasoning or 0, seed)
    response_format = body.get("response_format") or {}
    if directives.reply is not None:
        tokens = split_reply(directives.reply)
    elif response_format.get("type") in ("json_object", "json_schema"):
        tokens = split_reply(build_json_reply(messages, response_format, count, seed))
    else:
        tokens = build_reply(messages, count, seed)
    calls: list[dict[str, str]] = []
    stopped = cut_at_stop(tokens, body.get("stop"))
    if stopped is not None:  # a stop sequence ends it before any call
        tokens = stopped
    elif _makes_calls(body, directives):
        count = directives.tool_calls or 0
        if body.get("parallel_tool_calls") is False:
            count = min(count, 1)
        calls = build_tool_calls(messages, _named_tools(body), count, seed)
    finish_reason, reasoning_cut = "stop", False
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and max_tokens < (
        len(reasoning) + len(tokens) + tool_tokens(calls)
    ):
        finish_reason, calls = "length", []
        reasoning_cut = max_tokens < len(reasoning)
        reasoning = reasoning[:max_tokens]
        tokens = tokens[: max_tokens - len(reasoning)]
    elif calls:
        finish_reason = "tool_calls"
    return {
        "reasoning": reasoning,
        "reasoning_cut": reasoning_cut,
        "tokens": tokens,
        "tool_calls": calls,
        "finish_reason": directives.finish or finish_reason,
        "prompt_tokens": max(count_prompt_tokens(messages), directives.cached or 0),
        "logprobs": body.get("logprobs") is True,
        "top_logprobs": body.get("top_logprobs") or 0,
    }


def _makes_calls(body: Mapping[str, Any], directives: Directives) -> bool:
    """[[tool_calls:N]] calls, unless the conversation ends with the results of
    calls (the model answers them in text) or tool_choice is "none"."""
    return (
        bool(directives.tool_calls)
        and body["messages"][-1]["role"] != "tool"
        and body.get("tool_choice") != "none"
    )


def _named_tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The tools the calls name: the one tool_choice forces, or all of them."""
    choice, tools = body.get("tool_choice"), body.get("tools")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return [tool for tool in tools if tool["function"]["name"] == name]
    return tools


def usage(completion: Completion) -> dict[str, Any]:
    reasoning = len(completion.reasoning)
    completion_tokens = (
        reasoning + len(completion.tokens) + tool_tokens(completion.tool_calls)
    )
    result: dict[str, Any] = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": completion.prompt_tokens + completion_tokens,
    }
    directives = completion.directives
    if directives.reasoning is not None:
        result["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if directives.cached is not None:
        result["prompt_tokens_details"] = {"cached_tokens": directives.cached}
    return result


def think_pieces(completion: Completion) -> list[str]:
    """The reasoning as inline content: tags on the first and last pieces."""
    pieces = list(completion.reasoning)
    if pieces:
        pieces[0] = "<think>" + pieces[0]
        if not completion.reasoning_cut:
            pieces[-1] += "</think>"
    return pieces


def logprobs_of(completion: Completion, pieces: list[str]) -> dict[str, Any]:
    """A choice's ``logprobs`` for answer `pieces`, under content or refusal."""
    entries = token_logprobs(pieces, completion.top_logprobs)
    if completion.directives.refusal:
        return {"content": None, "refusal": entries}
    return {"content": entries, "refusal": None}


def whole_completion(completion: Completion) -> dict[str, Any]:
    """The answer as one non-streamed ``chat.completion``."""
    directives = completion.directives
    text = "".join(completion.tokens)
    content: str | None = None if directives.refusal else text
    if directives.reasoning is not None and directives.reasoning_field == "think":
        content = "".join(think_pieces(completion)) + (content or "")
    if content == "" and completion.tool_calls:
        content = None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if directives.reasoning is not None and directives.reasoning_field != "think":
        message[directives.reasoning_field] = "".join(completion.reasoning)
    message["refusal"] = text if directives.refusal else None
    message["annotations"] = []
    if completion.tool_calls:
        message["tool_calls"] = message_tool_calls(completion.tool_calls)
    choice = {
        "index": 0,
        "message": message,
        "logprobs": (
            logprobs_of(completion, completion.tokens) if completion.logprobs else None
        ),
        "finish_reason": completion.finish_reason,
    }
    return {
        "id": completion.completion_id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [choice],
        "usage": usage(completion),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
