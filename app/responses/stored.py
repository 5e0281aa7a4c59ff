"""Responses the server keeps, in its conversation store (``app/conversations.py``).

A response is kept when its request has ``store`` (the default) and the server
knows whose it is: a token's user, or an anonymous browser's owner cookie. Its
conversation is then a conversation of that owner, like the page's, and its id is
``resp_`` and its answer's message id. ``previous_response_id`` names such a
response: the new input continues its conversation from that answer (the
instructions are the new request's own, as OpenAI's API has them). A kept response
is read back from the store once its stream is no longer kept for a resume.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..chat_request import ChatRequest, Limits
from ..conversations import History
from ..errors import ProtocolError
from ..history import Message
from ..providers.base import ANSWER, REASONING, TOOL_CALL, Piece
from ..streams import Event

PREFIX = "resp_"


def kept(
    history: History | None,
    owner: str | None,
    chat: ChatRequest,
    limits: Limits,
    store: bool,
    previous: str | None,
) -> ChatRequest:
    """``chat`` with the turn it adds to its conversation when it is kept, and the
    earlier messages of ``previous``'s conversation before its input; its id is then
    the response's."""
    if previous is not None:
        if history is None:
            raise ProtocolError(
                "invalid_request",
                "previous_response_id: this server keeps no conversations",
            )
        if owner is None:
            raise ProtocolError(
                "invalid_request",
                "previous_response_id: only a known caller's responses are kept "
                "(a token, or the owner cookie)",
            )
        answer = _answer(history, owner, previous)
        try:
            chat = history.prepare(
                owner, chat, limits, answer.conversation_id, answer.id
            )
        except ProtocolError as exc:
            raise _renamed(exc) from None
        if not store:
            # The conversation so far, without keeping this turn in it.
            return replace(chat, turn=None)
    elif store and history is not None and owner is not None:
        chat = history.prepare(owner, chat, limits, None)
    if chat.turn is None:
        return chat
    return replace(chat, id=PREFIX + chat.turn.answer_id)


def _answer(history: History, owner: str, response_id: str) -> Message:
    """The kept answer ``response_id`` names, or ``not_found``."""
    missing = ProtocolError(
        "not_found",
        f"previous_response_id: no kept response {response_id!r}",
    )
    if not response_id.startswith(PREFIX):
        raise missing
    try:
        message = history.message(owner, response_id.removeprefix(PREFIX))
    except ProtocolError as exc:
        if exc.code in ("not_found", "invalid_request"):
            raise missing from None
        raise
    if message.role != "assistant":
        raise missing
    return message


def _renamed(exc: ProtocolError) -> ProtocolError:
    """A limit the whole conversation breaks, named as the request reaches it."""
    if exc.code != "invalid_request" or not exc.message.startswith("messages"):
        return exc
    _, _, why = exc.message.partition(": ")
    return ProtocolError(
        "invalid_request",
        f"previous_response_id: the conversation with this input breaks a limit: {why}",
    )


def read_back(
    history: History | None, owner: str | None, response_id: str
) -> tuple[Message, list[Piece], Event] | None:
    """A kept response as its stream would give it again: the answer, its pieces
    and its end; None when there is none by that id for ``owner``."""
    if history is None or owner is None or not response_id.startswith(PREFIX):
        return None
    try:
        message = history.message(owner, response_id.removeprefix(PREFIX))
    except ProtocolError as exc:
        if exc.code in ("not_found", "invalid_request"):
            return None
        raise
    if message.role != "assistant":
        return None
    pieces: list[Piece] = []
    if message.reasoning:
        pieces.append((REASONING, message.reasoning))
    text = message.content if isinstance(message.content, str) else ""
    if text:
        pieces.append((ANSWER, text))
    for index, call in enumerate(message.tool_calls or ()):
        function = call["function"]
        fragment = {
            "index": index,
            "id": call["id"],
            "name": function["name"],
            "arguments": function["arguments"],
        }
        pieces.append((TOOL_CALL, fragment))
    end: dict[str, Any]
    if message.error:
        end = {"code": message.error["code"], "message": message.error["message"]}
        return message, pieces, ("error", end)
    end = {
        "finish_reason": message.finish_reason or "stop",
        "usage": message.usage,
        "model": message.model,
    }
    return message, pieces, ("done", end)
