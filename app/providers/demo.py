"""The offline demo model: runs with no upstream, no key and no network.

It answers the question it was asked (quoting it and building on its key words), writes
markdown, is deterministic for a given conversation, and is paced like a real model so
the streaming path is exercised the same way.
"""

import hashlib
import random
import re
import time
from collections.abc import Generator
from typing import Any

from .. import tokens
from ..chat_request import ChatRequest, message_text
from .base import ANSWER, REASONING, Abort, Batch, Piece, Result, Usage

MODEL = "demo"
REASONING_MODEL = "demo-reasoning"

# Whitespace-led pieces: each is one streamed token, and joining them gives the text.
_TOKEN = re.compile(r"\s*\S+|\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
# Words too common to be what a question is about.
_STOPWORD_TEXT = """
about above after again also and any are because been before being below
between both but can could did does doing down during each few for from further
had has have having her here hers him his how into its itself just let like
more most much must not now off once only other our out over own please same
she should show some such tell than that the their them then there these they
this those through too under until very was were what when where which while
who whom why will with would write you your give make explain describe list
table code example examples using use
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_OPENERS = (
    "Here is how I would think about {topic}.",
    "Let's break {topic} down.",
    "Good question about {topic}.",
    "A short tour of {topic} follows.",
)
_POINTS = (
    "Start from what {a} is for, then look at how {b} depends on it.",
    "Most of the difficulty with {a} is in the edge cases, not the happy path.",
    "Measure {a} before changing it; guesses about {b} are usually wrong.",
    "Keep {a} small and explicit, so that {b} stays easy to reason about.",
    "Write down the assumptions behind {a}; they decide how {b} behaves.",
    "Compare two concrete options for {a} side by side rather than in the abstract.",
    "The simplest version of {a} that works is the one to keep.",
    "When {a} and {b} disagree, the data about {b} usually settles it.",
)
_CLOSERS = (
    "Ask a follow-up and I will build on this turn.",
    "Point a real model at the server (set `OPENAI_API_KEY` or `OPENAI_BASE_URL`) "
    "for real answers.",
    "The same question always gets this same answer from the demo model.",
)


_THOUGHTS = (
    "First, what does {a} depend on, and does {b} change that?",
    "A common mistake with {a} is to skip the edge cases; I should mention them.",
    "An example would make {a} concrete, so I will include one.",
    "Comparing {a} with {b} side by side may be clearer than describing each.",
    "The simplest explanation of {a} that is still correct is the one to give.",
    "I should keep the answer short and put the most useful point about {b} first.",
)


def _digest(messages: list[dict[str, Any]]) -> bytes:
    return hashlib.sha256(
        "\x1e".join(f"{m['role']}\x1f{message_text(m)}" for m in messages).encode()
    ).digest()


def _question(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The last user message: what the demo model answers (a tool result that
    follows it changes nothing, since the demo model calls no tools)."""
    return next(m for m in reversed(messages) if m["role"] == "user")


def _images(message: dict[str, Any]) -> int:
    content = message.get("content")
    if isinstance(content, str):
        return 0
    return sum(1 for part in content or () if part.get("type") == "image_url")


def _keywords(text: str) -> list[str]:
    seen: list[str] = []
    for word in _WORD.findall(text):
        lowered = word.lower()
        if lowered not in _STOPWORDS and lowered not in seen:
            seen.append(lowered)
    return seen


def _quote(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def compose(messages: list[dict[str, Any]]) -> str:
    """The demo model's whole answer to a conversation, as markdown."""
    asked = _question(messages)
    question = message_text(asked) or "this image"
    rng = random.Random(_digest(messages))
    words = _keywords(question) or ["your question"]
    topic = " and ".join(f"**{w}**" for w in words[:2])
    a, b = words[0], words[1] if len(words) > 1 else words[0]
    turn = sum(1 for m in messages if m["role"] == "user")
    lowered = question.lower()

    parts = [
        f"*I am the offline demo model: no real model is configured, so this answer "
        f"is generated locally.* You asked: “{_quote(question)}”"
        + (f" (turn {turn} of our conversation)." if turn > 1 else "."),
        rng.choice(_OPENERS).format(topic=topic),
    ]
    if images := _images(asked):
        parts.append(
            f"You sent {images} image{'s' if images > 1 else ''}; the demo model "
            "cannot see images, so this answer is about your words only."
        )
    points = rng.sample(_POINTS, 3)
    if any(k in lowered for k in ("step", "how do", "how to", "list")):
        parts.append(
            "\n".join(
                f"{i}. {p.format(a=a, b=b)}" for i, p in enumerate(points, start=1)
            )
        )
    else:
        parts.append("\n".join(f"- {p.format(a=a, b=b)}" for p in points))
    if "table" in lowered:
        rows = [
            f"| {w} | {len(w)} | {rng.choice(('low', 'medium', 'high'))} |"
            for w in words[:4]
        ]
        parts.append("| term | letters | weight |\n|---|---:|---|\n" + "\n".join(rows))
    if any(k in lowered for k in ("code", "python", "function", "script", "example")):
        name = re.sub(r"\W", "_", a)
        parts.append(
            "```python\n"
            f"def {name}_summary(items):\n"
            f'    """Count how often each {a} appears."""\n'
            "    counts = {}\n"
            "    for item in items:\n"
            "        counts[item] = counts.get(item, 0) + 1\n"
            "    return counts\n"
            "```"
        )
    parts.append(rng.choice(_CLOSERS))
    return "\n\n".join(parts)


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def compose_reasoning(messages: list[dict[str, Any]]) -> str:
    """What the demo reasoning model thinks before it answers, as plain prose."""
    question = message_text(_question(messages)) or "this image"
    rng = random.Random(_digest(messages) + b"reasoning")
    words = _keywords(question) or ["the question"]
    a, b = words[0], words[1] if len(words) > 1 else words[0]
    steps = rng.sample(_THOUGHTS, 3)
    return " ".join(
        [f"The question is about {a}; I should work out what is really being asked."]
        + [step.format(a=a, b=b) for step in steps]
        + ["That is enough to write a short, structured answer."]
    )


class DemoProvider:
    """Streams ``compose``'s answer, paced by time to first token and tokens/s.

    ``demo-reasoning`` first streams ``compose_reasoning``'s thoughts as reasoning
    text, at the same pace, then the same answer."""

    models = [MODEL, REASONING_MODEL]
    default_model = MODEL

    def __init__(self, ttft: float, tokens_per_second: float):
        self.ttft = ttft
        self.interval = 1 / tokens_per_second if tokens_per_second > 0 else 0.0

    def stream(
        self,
        request: ChatRequest,
        messages: list[dict[str, Any]],
        abort: Abort | None = None,
    ) -> Generator[Batch, None, Result]:
        pieces: list[Piece] = []
        if request.model == REASONING_MODEL:
            thoughts = split_tokens(compose_reasoning(request.messages))
            pieces += [(REASONING, piece) for piece in thoughts]
        pieces += [(ANSWER, piece) for piece in split_tokens(compose(request.messages))]
        finish_reason = "stop"
        # max_tokens counts reasoning first, as upstreams do.
        if request.max_tokens is not None and len(pieces) > request.max_tokens:
            pieces = pieces[: request.max_tokens]
            finish_reason = "length"
        # An absolute schedule, so sleeping late once does not slow every later token.
        start = time.monotonic() + self.ttft
        index = 0
        while index < len(pieces):
            delay = start + index * self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            due = len(pieces)
            if self.interval:
                # Every token due by now leaves in this batch: a caller that waited
                # gets what came due meanwhile, as a real upstream's bytes arrive.
                came_due = int((time.monotonic() - start) / self.interval) + 1
                due = max(index + 1, min(len(pieces), came_due))
            yield pieces[index:due]
            index = due
        # The demo model's tokens are its pieces: max_tokens counts them too.
        prompt_tokens = tokens.count_messages(messages)
        completion_tokens = len(pieces)
        return Result(
            finish_reason=finish_reason,
            model=request.model,
            usage=Usage(
                prompt_tokens,
                completion_tokens,
                prompt_tokens + completion_tokens,
                sum(1 for kind, _ in pieces if kind == REASONING),
            ),
        )
