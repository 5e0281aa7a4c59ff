"""The moderator at the relay's named points (``app/stages.py``).

- ``starting``: the client's messages (all but the model's own turns) are checked
  before the upstream is called; a flagged one ends the request with
  ``content_filtered``, and nothing goes upstream.
- Hold mode (the default, and always for HTTP clients): ``passing`` keeps each
  read's pieces back, checks each window as it fills, and lets out the pieces
  whose text has passed; a flagged window ends the request with ``done``
  (``content_filter``) before any of it went out, closing the upstream.
  ``draining`` checks the rest and the whole text, then lets the rest out.
- Stream mode (Socket.IO clients): the text goes out at once and each window is
  checked just behind it, in a task of its own. A flagged window ends the request
  at once (the upstream closed), its chunks taken back from the resume buffer and
  from the client with ``retract`` (``Relay.retract``). ``draining`` waits for the
  check under way, then checks the rest and the whole text.

A whole text that fails after its windows passed is taken back whole from a
Socket.IO client; an HTTP client, which cannot be told, gets ``content_filter``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..blocking import Offload
from ..chat_request import message_text
from ..errors import ProtocolError
from ..providers.base import ANSWER, REASONING, REFUSAL, Batch
from ..stages import Halt, Stage
from .checks import Checks
from .metrics import ModerationMetrics
from .moderators import Moderator, Verdict
from .windows import Windows, seq_at

if TYPE_CHECKING:
    from ..relay import Relay
    from ..streams import Event, Stream

log = logging.getLogger(__name__)

CONTENT_FILTER = "content_filter"
# Only a Socket.IO client can be told to take text back (``retract``).
_RETRACTS = "socketio"


class _Answer:
    """One request's moderation: its text and windows, and in stream mode the check
    running behind it."""

    def __init__(self, windows: Windows, streaming: bool):
        self.windows = windows
        self.streaming = streaming
        self.lock = threading.Lock()
        self.checking = False
        # Set while no check runs behind the text.
        self.idle = threading.Event()
        self.idle.set()
        self.flagged = False
        # Characters counted as held in the gauge; none once the request ended.
        self.counted = 0
        self.ended = False


class Moderation(Stage):
    def __init__(self, config: Mapping[str, Any], moderator: Moderator):
        self.moderator = moderator
        self.config = config
        self.stream_mode = config["MODERATION_MODE"] == "stream"
        self.window = config["MODERATION_WINDOW_CHARS"]
        self.overlap = config["MODERATION_OVERLAP_CHARS"]
        self.kinds = frozenset(
            (ANSWER, REFUSAL, REASONING)
            if config["MODERATION_REASONING"]
            else (ANSWER, REFUSAL)
        )
        self._answers: dict[str, _Answer] = {}
        self._relay: Relay | None = None
        self.metrics: ModerationMetrics | None = None
        self.checks: Checks | None = None

    def bind(self, relay: Relay) -> None:
        """Work for ``relay``: count in its metrics, check behind its streams in its
        tasks, and take text back through it."""
        self._relay = relay
        self.metrics = ModerationMetrics(relay.metrics.registry)
        self.checks = Checks(
            self.moderator,
            self.metrics,
            Offload(self.config["ASYNC_MODE"]),
            timeout=self.config["MODERATION_TIMEOUT"],
            concurrency=self.config["MODERATION_CONCURRENCY"],
            block_on_error=self.config["MODERATION_ON_ERROR"] == "block",
        )

    # -- the input ---------------------------------------------------------------------

    def starting(self, stream: Stream) -> None:
        assert self.checks is not None, "bind() the stage to its relay first"
        where, texts = [], []
        for index, message in enumerate(stream.request.messages):
            if message.get("role") == "assistant":
                continue  # the model's own words, checked as it said them
            text = message_text(message)
            if text.strip():
                where.append(index)
                texts.append(text)
        if texts:
            verdicts = self.checks.run(texts, "input")
            for index, verdict in zip(where, verdicts, strict=True):
                _refuse_input(stream.id, index, verdict)
        self._answers[stream.token] = _Answer(
            Windows(self.window, self.overlap),
            self.stream_mode and stream.transport == _RETRACTS,
        )

    # -- the output --------------------------------------------------------------------

    def passing(self, stream: Stream, batch: Batch) -> Batch:
        answer = self._answers.get(stream.token)
        if answer is None:
            return batch
        if answer.streaming:
            return self._behind(stream, answer, batch)
        return self._hold(stream, answer, batch)

    def _hold(self, stream: Stream, answer: _Answer, batch: Batch) -> Batch:
        assert self.checks is not None
        windows = answer.windows
        for piece in batch:
            if piece[0] in self.kinds:
                windows.add(piece[1])
            windows.hold(piece)
        self._count_held(answer)
        while (span := windows.span()) is not None:
            if stream.closing or stream.ended:
                return []  # stopped meanwhile: nothing more goes out
            verdict = self.checks.run([windows.text()[span[0] : span[1]]], "window")[0]
            if verdict.flagged:
                raise Halt(CONTENT_FILTER)
            windows.passed_to(span[1])
        released = windows.release()
        self._count_held(answer)
        return released

    def _count_held(self, answer: _Answer) -> None:
        """Bring the held-characters gauge up to date with ``answer``."""
        assert self.metrics is not None
        with answer.lock:
            if answer.ended:
                return
            change = answer.windows.held_chars - answer.counted
            answer.counted += change
        self.metrics.held.inc(change)

    def _behind(self, stream: Stream, answer: _Answer, batch: Batch) -> Batch:
        start = False
        with answer.lock:
            if answer.flagged:
                return []  # the request is being ended
            for piece in batch:
                if piece[0] in self.kinds:
                    answer.windows.add(piece[1])
            if not answer.checking and answer.windows.span() is not None:
                answer.checking = start = True
                answer.idle.clear()
        if start:
            assert self._relay is not None
            self._relay.socketio.start_background_task(
                self._check_behind, stream, answer
            )
        return batch

    def _check_behind(self, stream: Stream, answer: _Answer) -> None:
        """Check each window due, one after the other, until none is."""
        assert self.checks is not None
        try:
            while True:
                with answer.lock:
                    span = answer.windows.span()
                    if span is None or stream.ended or stream.closing:
                        return
                    window = answer.windows.text()[span[0] : span[1]]
                verdict = self.checks.run([window], "window")[0]
                if verdict.flagged:
                    answer.flagged = True
                    self._take_back(stream, span[0])
                    return
                with answer.lock:
                    answer.windows.passed_to(span[1])
        except Exception:
            log.exception("checking %s behind its stream failed", stream.id)
        finally:
            with answer.lock:
                answer.checking = False
                answer.idle.set()

    def draining(self, stream: Stream) -> Batch:
        answer = self._answers.get(stream.token)
        if answer is None:
            return []
        assert self.checks is not None and self.metrics is not None
        # The check under way behind the stream finishes first: it may end it.
        answer.idle.wait()
        if answer.flagged or stream.closing or stream.ended:
            return []
        windows = answer.windows
        spans = []
        tail = windows.span(final=True)
        if tail is not None and tail != (0, windows.length):
            spans.append(tail)
        if windows.length:
            spans.append((0, windows.length))
        if spans:
            whole = windows.text()
            texts = [whole[start:end] for start, end in spans]
            verdicts = self.checks.run(texts, "final")
            for (start, _), verdict in zip(spans, verdicts, strict=True):
                if verdict.flagged:
                    answer.flagged = True
                    # In hold mode only the whole text (start 0) went out in part.
                    if answer.streaming or (
                        start == 0 and stream.transport == _RETRACTS
                    ):
                        self._take_back(stream, start)
                        return []
                    raise Halt(CONTENT_FILTER)
            windows.passed_to(windows.length)
        released = windows.release_all()
        self._count_held(answer)
        return released

    def retrying(self, stream: Stream) -> None:
        """The generation starts over (an upstream outage before any chunk went
        out): what the failed attempt held is not the answer."""
        answer = self._answers.get(stream.token)
        if answer is None:
            return
        answer.idle.wait()
        answer.windows = Windows(self.window, self.overlap)
        self._count_held(answer)

    def _take_back(self, stream: Stream, offset: int) -> None:
        """End ``stream`` with ``content_filter``, its chunks from the one holding
        character ``offset`` of the moderated text on taken back."""
        assert self._relay is not None
        with stream.lock:
            from_seq = seq_at(stream.parts, offset, self.kinds)
        self._relay.retract(stream, from_seq)

    def ending(self, stream: Stream, event: str, payload: dict[str, Any]) -> Event:
        answer = self._answers.pop(stream.token, None)
        if answer is not None and self.metrics is not None:
            with answer.lock:
                answer.ended = True
                counted, answer.counted = answer.counted, 0
            self.metrics.held.dec(counted)
        return event, payload


def _refuse_input(request_id: str, index: int, verdict: Verdict) -> None:
    if not verdict.flagged:
        return
    if verdict.failed:
        raise ProtocolError(
            "moderation_unavailable",
            f"messages[{index}]: could not be checked (the moderator failed); retry",
            request_id,
        )
    categories = ", ".join(verdict.categories)
    raise ProtocolError(
        "content_filtered",
        f"messages[{index}]: did not pass the content filter ({categories})",
        request_id,
    )
