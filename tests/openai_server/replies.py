"""What the model says: reply, reasoning, JSON answers and logprobs, all chosen
by hashing the conversation, so a test can compute the exact text it expects."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from .directives import DIRECTIVE

_WORD = re.compile(r"[\w'-]+")
_REPLY_PIECE = re.compile(r"\s*\S+|\s+")
_FILLER_WORDS = """
river stone lantern meadow copper signal harbor orbit velvet canyon pepper
marble thunder willow ember quartz falcon tundra cedar beacon saffron glacier
compass lagoon timber nebula prism cobalt juniper harvest summit crystal delta
mosaic anchor breeze garnet horizon ivory jasmine kettle ledger mirror nectar
oasis pebble quill ripple sparrow tapestry umber vessel walnut yonder zephyr
amber bramble cinder dune fable grove hollow island
"""
FILLER = tuple(_FILLER_WORDS.split())


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _plain_text(message: Mapping[str, Any]) -> str:
    """The message text without directives, its whitespace normalised."""
    return " ".join(DIRECTIVE.sub(" ", message_text(message)).split())


def last_user_index(messages: Sequence[Mapping[str, Any]]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return None


def conversation_key(
    messages: Sequence[Mapping[str, Any]], seed: int | None = None
) -> bytes:
    """What the hashed choices depend on: each message's role and plain text,
    and the request's seed when it has one."""
    key = json.dumps([(str(m.get("role")), _plain_text(m)) for m in messages])
    return (key if seed is None else f"{key} seed {seed}").encode()


def quoted_words(messages: Sequence[Mapping[str, Any]]) -> str:
    """The first four words of the last user message, as the reply quotes them."""
    last = last_user_index(messages)
    return (
        " ".join(_WORD.findall(_plain_text(messages[last]))[:4])
        if last is not None
        else ""
    )


def filler(seed: bytes, count: int) -> list[str]:
    count = max(count, 0)
    numbers = struct.unpack(f">{count}H", hashlib.shake_256(seed).digest(2 * count))
    return [FILLER[number % len(FILLER)] for number in numbers]


def _pieces(words: list[str]) -> list[str]:
    """Words as stream pieces: a space before all but the first, a full stop last."""
    pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
    if pieces and not pieces[-1].endswith("."):
        pieces[-1] += "."
    return pieces


def build_reply(
    messages: Sequence[Mapping[str, Any]], count: int, seed: int | None = None
) -> list[str]:
    """The `count` reply tokens for a conversation; directives do not affect them.

    The first token has no leading space and every later one has one, so the
    tokens concatenate to the reply text, which ends with a full stop. A reply
    cut short by max_tokens is a prefix of the full one. A request's `seed`
    chooses other filler words.
    """
    quoted = quoted_words(messages)
    words = f'You said "{quoted}".'.split() if quoted else ["You", "said", "nothing."]
    words += filler(conversation_key(messages, seed), count - len(words))
    return _pieces(words[:count])


def split_reply(text: str) -> list[str]:
    """The pieces [[reply:B]] streams its text in: each run of whitespace goes
    with the word after it, so the pieces concatenate to the text."""
    return _REPLY_PIECE.findall(text)


def build_reasoning(
    messages: Sequence[Mapping[str, Any]], count: int, seed: int | None = None
) -> list[str]:
    """The `count` reasoning pieces streamed before the reply by [[reasoning:N]].

    Filler words chosen by hashing the conversation (other words than the
    reply's), the first capitalised; like build_reply's tokens they concatenate
    to the reasoning text, which ends with a full stop, and a cut is a prefix.
    """
    words = filler(b"reasoning " + conversation_key(messages, seed), count)
    if words:
        words[0] = words[0].capitalize()
    return _pieces(words)


def build_json_reply(
    messages: Sequence[Mapping[str, Any]],
    response_format: Mapping[str, Any],
    count: int,
    seed: int | None = None,
) -> str:
    """The answer text for a `response_format` of type json_object or json_schema.

    json_object: ``{"answer": R}``, R build_reply's text of `count` tokens.
    json_schema: an object with every property the schema declares (nested
    objects, arrays, ``$ref``, ``anyOf`` and ``enum`` followed), strings made of
    filler words, integers, numbers and booleans counted out in order.
    """
    if response_format.get("type") == "json_object":
        answer = {"answer": "".join(build_reply(messages, count, seed))}
        return json.dumps(answer, ensure_ascii=False)
    schema = response_format.get("json_schema", {}).get("schema") or {}
    values = _SchemaValues(schema, conversation_key(messages, seed))
    return json.dumps(values.of(schema, 0), ensure_ascii=False)


class _SchemaValues:
    """Deterministic values for a JSON schema, drawn in document order."""

    def __init__(self, root: Mapping[str, Any], key: bytes) -> None:
        self.root, self.words, self.drawn = root, filler(b"json " + key, 64), 0

    def of(self, schema: Any, depth: int) -> Any:
        self.drawn += 1
        if not isinstance(schema, Mapping) or depth > 8:
            return self._words()
        if isinstance(schema.get("$ref"), str):
            return self.of(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for keyword in ("anyOf", "oneOf", "allOf"):
            given = schema.get(keyword)
            options = [
                option
                for option in (given if isinstance(given, list) else [])
                if not (isinstance(option, Mapping) and option.get("type") == "null")
            ]
            if options:
                return self.of(options[0], depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in schema):
            properties = schema.get("properties")
            if not isinstance(properties, Mapping):
                properties = {}
            return {name: self.of(sub, depth + 1) for name, sub in properties.items()}
        if kind == "array":
            low, high = schema.get("minItems"), schema.get("maxItems")
            count = min(3, high) if isinstance(high, int) else 3
            count = min(max(low, count), 100) if isinstance(low, int) else count
            return [self.of(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "integer":
            return self.drawn
        if kind == "number":
            return self.drawn + 0.5
        if kind == "boolean":
            return self.drawn % 2 == 1
        if kind == "null":
            return None
        return self._words()

    def _words(self) -> str:
        at = self.drawn % len(self.words)
        return f"{self.words[at]} {self.words[(at + 1) % len(self.words)]}"

    def _resolve(self, ref: str) -> Any:
        node: Any = self.root
        for part in ref.removeprefix("#/").split("/") if ref != "#" else []:
            node = node.get(part) if isinstance(node, Mapping) else None
        return node


def token_logprobs(pieces: Sequence[str], top: int = 0) -> list[dict[str, Any]]:
    """The ``logprobs.content`` entries of answer pieces, one per piece: a logprob
    chosen by hashing the piece and its place, and `top` ``top_logprobs``, the
    piece itself first, then filler words each 0.75 less likely."""
    entries = []
    for index, piece in enumerate(pieces):
        number = zlib.crc32(f"{index} {piece}".encode())
        logprob = -(number % 20_000 + 1) / 10_000
        alternatives = [_logprob(piece, logprob)]
        step = 1
        while len(alternatives) < top:
            word = " " + FILLER[(number + step) % len(FILLER)]
            step += 1
            if word != piece:
                less = round(logprob - 0.75 * len(alternatives), 4)
                alternatives.append(_logprob(word, less))
        entries.append({**_logprob(piece, logprob), "top_logprobs": alternatives[:top]})
    return entries


def _logprob(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def cut_at_stop(
    pieces: list[str], stop: str | Sequence[str] | None
) -> list[str] | None:
    """The pieces up to the first stop sequence in their text, or None when none
    of them occurs (the last piece kept may be cut inside)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    text = "".join(pieces)
    found = [at for at in (text.find(s) for s in stops if s) if at >= 0]
    if not found:
        return None
    end, length, kept = min(found), 0, []
    for piece in pieces:
        if length + len(piece) > end:
            if end > length:
                kept.append(piece[: end - length])
            break
        kept.append(piece)
        length += len(piece)
    return kept


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """A rough count: words of every message plus three per message."""
    return sum(len(message_text(m).split()) + 3 for m in messages)
