"""Reasoning written inline, as ``<think>…</think>`` at the start of the content.

Servers run without a reasoning parser (vLLM, llama.cpp or Ollama serving DeepSeek-R1,
Qwen3 or QwQ) stream the model's reasoning in ``content``, between these tags, before
the answer. The tags may be cut anywhere between chunks (``<th`` + ``ink>``), so the
few characters that could be the start of one wait for the next chunk.
"""

from __future__ import annotations

from .base import ANSWER, REASONING, Piece

OPEN = "<think>"
CLOSE = "</think>"


class ThinkTags:
    """Splits streamed content into reasoning and answer pieces, in order."""

    def __init__(self) -> None:
        # before: no text yet; thinking / after: inside / just past the tags;
        # answer: everything from here on is answer text.
        self._state = "before"
        self._held = ""

    def feed(self, text: str) -> list[Piece]:
        if self._state == "answer":
            return [(ANSWER, text)]
        text = self._held + text
        self._held = ""
        pieces: list[Piece] = []
        while text:
            if self._state == "before":
                start = text.lstrip()
                if start.startswith(OPEN):
                    self._state, text = "opened", start[len(OPEN) :]
                elif not start or OPEN.startswith(start):
                    self._held = text  # maybe the start of the open tag
                    break
                else:
                    self._state = "answer"
            elif self._state in ("opened", "after"):
                # The newlines around the tags are layout, not text.
                text = text.lstrip()
                if text:
                    self._state = "thinking" if self._state == "opened" else "answer"
            elif self._state == "thinking":
                end = text.find(CLOSE)
                if end >= 0:
                    if end:
                        pieces.append((REASONING, text[:end]))
                    self._state, text = "after", text[end + len(CLOSE) :]
                    continue
                keep = _partial_suffix(text, CLOSE)
                if keep < len(text):
                    pieces.append((REASONING, text[: len(text) - keep]))
                self._held = text[len(text) - keep :]
                break
            else:
                pieces.append((ANSWER, text))
                break
        return [piece for piece in pieces if piece[1]]

    def finish(self) -> list[Piece]:
        """What is still held when the stream ends (cut inside a tag, say)."""
        held, self._held = self._held, ""
        if not held:
            return []
        return [(REASONING if self._state == "thinking" else ANSWER, held)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that ``tag`` starts with."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
