"""The named points at which the core calls the capabilities around it.

A stage (the conversation store, the moderator) sees every request the relay runs,
whatever transport it came over, at four points of its life:

- ``starting``: in the generation's own task, before the upstream is called. It may
  block (it runs off the event loop through ``blocking.run``); raising
  ``ProtocolError`` ends the request with that error, and nothing goes upstream.
- ``passing``: each read's pieces, before they are kept for a resume and sent. It
  returns what may go out now; what it keeps back it hands out later.
- ``retrying``: the generation starts over (an upstream outage before any chunk
  went out): what a stage held of the failed attempt is not the answer.
- ``draining``: when the model has finished, before the end: what a stage still
  holds and may now release.
- ``ending``: once, when the request ends (done, error, stop, disconnect), before
  the terminal event is sent and after no more chunks can be. It returns the terminal
  event, possibly another one (a store that failed turns ``done`` into an error).

``passing`` and ``draining`` may raise ``Halt`` to end the request at once with
``done`` and the halt's finish reason: the upstream stream is closed, and nothing of
the batch goes out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .providers.base import Batch

if TYPE_CHECKING:
    from .streams import Event, Stream


class Halt(Exception):
    """End the request now with ``done`` and ``finish_reason``."""

    def __init__(self, finish_reason: str):
        super().__init__(finish_reason)
        self.finish_reason = finish_reason


class Stage:
    """A capability the core calls at its named points; each method's default does
    nothing."""

    def starting(self, stream: Stream) -> None:
        """The request is about to go upstream."""

    def passing(self, stream: Stream, batch: Batch) -> Batch:
        """What of ``batch`` may be kept and sent now."""
        return batch

    def retrying(self, stream: Stream) -> None:
        """The generation starts over; nothing of the last attempt went out."""

    def draining(self, stream: Stream) -> Batch:
        """What is still held when the model has finished."""
        return []

    def ending(self, stream: Stream, event: str, payload: dict[str, Any]) -> Event:
        """The terminal event to send, given the one the request ended with."""
        return event, payload
