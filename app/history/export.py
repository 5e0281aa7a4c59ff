"""A conversation as a file: JSON (the whole tree, images as data URLs; read back by
``Store.import_json``) or Markdown (the branch in view, for people to read)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .content import BLOB_SCHEME
from .records import Conversation, InvalidInput, Message

FORMAT = "chatstream.conversation"
VERSION = 1
MAX_IMPORT_MESSAGES = 10_000
_HEADINGS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


def to_json(conversation: Conversation) -> str:
    data = {"format": FORMAT, "version": VERSION, **conversation.to_dict()}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def to_markdown(conversation: Conversation) -> str:
    """The current branch, each message under its role as a heading; reasoning in a
    collapsed block, tool calls as JSON code blocks. Other branches are in the
    JSON export."""
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    about = [conversation.created_at.strftime("%Y-%m-%d %H:%M UTC")]
    if conversation.model:
        about.insert(0, conversation.model)
    lines += [f"*{' · '.join(about)}*", ""]
    for message in current_branch(conversation):
        heading = _HEADINGS.get(message.role, message.role.title())
        if message.role == "tool" and message.tool_call_id:
            heading += f" (`{message.tool_call_id}`)"
        lines += [f"## {heading}", ""]
        if message.reasoning:
            lines += ["<details><summary>Reasoning</summary>", ""]
            lines += [message.reasoning.strip(), "", "</details>", ""]
        text = _markdown_content(message.content).strip()
        if text:
            lines += [text, ""]
        for call in message.tool_calls or ():
            function = call.get("function") or {}
            name = function.get("name") or "tool"
            lines += [f"Tool call `{name}`:", "", *_code_block(function), ""]
        ending = _ending(message)
        if ending:
            lines += [f"*{ending}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def current_branch(conversation: Conversation) -> list[Message]:
    """The messages from the root to the current leaf."""
    by_id = {message.id: message for message in conversation.messages}
    path = []
    cursor = conversation.current_leaf_id
    while cursor is not None and cursor in by_id and len(path) <= len(by_id):
        path.append(by_id[cursor])
        cursor = by_id[cursor].parent_id
    return path[::-1]


@dataclass(frozen=True)
class Imported:
    title: str | None
    model: str | None
    created_at: datetime
    updated_at: datetime
    current_leaf_id: str | None
    # Each as in the export, with ``created_at`` a datetime.
    messages: list[dict[str, Any]]


def parse_json(document: str | bytes | dict[str, Any]) -> Imported:
    """Read a JSON export, checking its shape; the message fields are checked as
    they are stored."""
    if isinstance(document, str | bytes):
        try:
            document = json.loads(document)
        except ValueError:
            raise InvalidInput("document: not JSON") from None
    if not isinstance(document, dict):
        raise InvalidInput("document: a JSON object")
    if document.get("format") != FORMAT or document.get("version") != VERSION:
        raise InvalidInput(f"format: not a {FORMAT} export of version {VERSION}")
    items = document.get("messages")
    if not isinstance(items, list):
        raise InvalidInput("messages: a list")
    if len(items) > MAX_IMPORT_MESSAGES:
        raise InvalidInput(f"messages: more than {MAX_IMPORT_MESSAGES}")
    seen: set[str] = set()
    parsed = []
    for index, item in enumerate(items):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: an object")
        message_id = item.get("id")
        if not isinstance(message_id, str) or not message_id or message_id in seen:
            raise InvalidInput(f"{where}.id: a string unique in the conversation")
        parent = item.get("parent_id")
        if parent is not None and parent not in seen:
            raise InvalidInput(f"{where}.parent_id: not an earlier message's id")
        seen.add(message_id)
        parsed.append(
            {**item, "created_at": _time(item.get("created_at"), f"{where}.created_at")}
        )
    leaf = document.get("current_leaf_id")
    if leaf is not None and leaf not in seen:
        raise InvalidInput("current_leaf_id: not one of the messages")
    title, model = document.get("title"), document.get("model")
    for field, value in (("title", title), ("model", model)):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{field}: a string or null")
    return Imported(
        title=title,
        model=model,
        created_at=_time(document.get("created_at"), "created_at"),
        updated_at=_time(document.get("updated_at"), "updated_at"),
        current_leaf_id=leaf,
        messages=parsed,
    )


def _time(value: Any, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidInput(f"{field}: an ISO 8601 time with its offset")
    return parsed


def _markdown_content(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part.get("type") == "text":
            pieces.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            # Data URLs and stored images would bury the text: only web images show.
            if url.startswith(("http://", "https://")):
                pieces.append(f"![image]({url})")
            elif url.startswith((BLOB_SCHEME, "data:")):
                pieces.append("*[image]*")
    return "\n\n".join(pieces)


def _code_block(function: dict[str, Any]) -> list[str]:
    """A call's arguments, indented when they are JSON (they are a string)."""
    arguments = function.get("arguments", "")
    try:
        text = json.dumps(json.loads(arguments), ensure_ascii=False, indent=2)
    except (TypeError, ValueError):
        text = str(arguments)
    fence = "```"
    while fence in text:
        fence += "`"
    return [f"{fence}json", text, fence]


def _ending(message: Message) -> str:
    if message.error:
        code = message.error.get("code", "error")
        detail = message.error.get("message")
        return f"Ended with an error: {code}" + (f" ({detail})" if detail else "")
    if message.finish_reason not in (None, "stop", "tool_calls"):
        return f"Ended: {message.finish_reason}"
    return ""
