"""Token counting for usage the upstream did not report.

bpe-openai ships OpenAI's encodings inside the package, so counting works offline
(tiktoken would download them on first use).
"""

from functools import lru_cache
from typing import Any

import bpe_openai

ENCODING = "o200k_base"

# OpenAI's chat format adds a few tokens per message and to prime the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMER = 3


@lru_cache(maxsize=1)
def _encoding() -> bpe_openai.Encoding:
    return bpe_openai.get_encoding(ENCODING)


def warm_up() -> None:
    """Load the encoding now rather than inside the first request."""
    _encoding()


def count_text(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


def count_messages(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat's text, counted the way OpenAI bills chat messages
    (images are billed by their size, which only the upstream knows: not counted)."""
    total = TOKENS_REPLY_PRIMER
    for message in messages:
        total += TOKENS_PER_MESSAGE + count_text(message["role"])
        content = message.get("content")
        if isinstance(content, str):
            total += count_text(content)
        else:
            for part in content or ():
                total += count_text(part.get("text") or "")
        for call in message.get("tool_calls") or ():
            function = call["function"]
            total += count_text(function["name"]) + count_text(function["arguments"])
    return total
