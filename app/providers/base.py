"""The interface every model provider implements.

A provider's ``stream`` is a generator. Each value it yields is a batch: the pieces
that one read of the model brought, in order: answer, reasoning or refusal text, or a
fragment of a tool call (``toolcalls.py``). It returns a ``Result``. A caller that
waits between batches gets what arrived meanwhile in the next one; a provider never
holds anything back on its own.
Closing the generator early must release the upstream connection, which is how a stop
or a disconnect stops the bill.
"""

import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..chat_request import ChatRequest
from ..errors import RETRYABLE

ANSWER: Literal["answer"] = "answer"
REASONING: Literal["reasoning"] = "reasoning"
REFUSAL: Literal["refusal"] = "refusal"
TOOL_CALL: Literal["tool_call"] = "tool_call"
Kind = Literal["answer", "reasoning", "refusal", "tool_call"]
# What a piece is and what it holds: ``(kind, text)`` for text, ``(kind, text,
# logprobs)`` for text whose tokens' log probabilities the upstream sent (OpenAI's
# ``logprobs.content`` entries), ``(TOOL_CALL, fragment)`` for a piece of a tool
# call. A batch is the pieces one read brought, in order.
Piece = tuple[Any, ...]
Batch = list[Piece]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Of completion_tokens, those spent reasoning; None when the upstream said nothing.
    reasoning_tokens: int | None = None
    # Of prompt_tokens, those the upstream had cached; None when it said nothing.
    cached_tokens: int | None = None


@dataclass(frozen=True)
class Result:
    finish_reason: str
    model: str
    usage: Usage | None = None
    # The upstream's configuration fingerprint, passed on when it sends one.
    system_fingerprint: str | None = None


class Abort:
    """How a request that ended elsewhere (a stop, a client gone for good) cuts its
    generation's upstream read short: the provider registers what closes its
    upstream response, and the relay fires it. Without it a generation waiting for a
    silent upstream would learn of the stop only with the upstream's next byte."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], object]] = []
        self._fired = False
        self._lock = threading.Lock()

    def on_abort(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if not self._fired:
                self._callbacks.append(callback)
                return
        callback()

    def fire(self) -> None:
        with self._lock:
            callbacks, self._callbacks, self._fired = self._callbacks, [], True
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logging.getLogger(__name__).exception("aborting a generation failed")


class UpstreamError(Exception):
    """A failure of the model behind the relay, with the protocol's error code, and
    the seconds after which the upstream said a retry may succeed (its
    ``Retry-After``), when it said."""

    def __init__(self, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = RETRYABLE[code]
        self.retry_after = retry_after


class Provider(Protocol):
    models: list[str]
    default_model: str

    def stream(
        self,
        request: ChatRequest,
        messages: list[dict[str, str]],
        abort: Abort | None = None,
    ) -> Generator[Batch, None, Result]:
        """Yield the reply's text, a batch per read; return how it finished.

        ``messages`` is the conversation as sent upstream, system prompt included.
        ``abort``, when given, is told how to close the upstream from another task.
        """
        ...
