"""The interface every model provider implements.

A provider's ``stream`` is a generator: it yields text deltas as the model writes them
and returns a ``Result``. Closing the generator early must release the upstream
connection, which is how a stop or a disconnect stops the bill.
"""

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

from ..protocol import RETRYABLE, ChatRequest


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Result:
    finish_reason: str
    model: str
    usage: Usage | None = None


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
        self, request: ChatRequest, messages: list[dict[str, str]]
    ) -> Generator[str, None, Result]:
        """Yield the reply's text deltas; return how it finished.

        ``messages`` is the conversation as sent upstream, system prompt included.
        """
        ...
