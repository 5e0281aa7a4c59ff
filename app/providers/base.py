"""The interface every model provider implements.

A provider's ``stream`` is a generator. Each value it yields is a batch: the pieces of
text that one read of the model brought, in order, each marked as answer or reasoning
text. It returns a ``Result``. A caller that waits between batches gets the text that
arrived meanwhile in the next one; a provider never holds text back on its own.
Closing the generator early must release the upstream connection, which is how a stop
or a disconnect stops the bill.
"""

import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Literal, Protocol

from ..protocol import RETRYABLE, ChatRequest

ANSWER: Literal["answer"] = "answer"
REASONING: Literal["reasoning"] = "reasoning"
Kind = Literal["answer", "reasoning"]
# A piece of text and what it is; a batch is the pieces one read brought, in order.
Piece = tuple[Kind, str]
Batch = list[Piece]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Of completion_tokens, those spent reasoning; None when the upstream said nothing.
    reasoning_tokens: int | None = None


@dataclass(frozen=True)
class Result:
    finish_reason: str
    model: str
    usage: Usage | None = None


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
    """A failure of the model behind the relay, with the protocol's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = RETRYABLE[code]


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
