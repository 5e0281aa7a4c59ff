"""Running a moderator: off the event loop, bounded, timed, counted, and with
``MODERATION_ON_ERROR`` applied to a failure.

A check that leaves the process (``openai``) or may block its thread (a callable)
waits for one of ``MODERATION_CONCURRENCY`` places, at most ``MODERATION_TIMEOUT``
seconds; the ``openai`` call itself gives up after that long too. A callable runs
on a pool thread under gevent and eventlet (``blocking.Offload``), so that a
classifier working in C does not stop every stream of the process. The keyword
moderator runs where it is called: a regular expression over a window takes
microseconds.
"""

from __future__ import annotations

import logging
import threading
import time

import openai

from ..blocking import Offload
from .metrics import ModerationMetrics
from .moderators import CallableModerator, Moderator, Verdict

log = logging.getLogger(__name__)


class ModeratorBusy(TimeoutError):
    """Every place for a remote check stayed taken for the whole timeout."""


class Checks:
    def __init__(
        self,
        moderator: Moderator,
        metrics: ModerationMetrics,
        offload: Offload,
        *,
        timeout: float,
        concurrency: int,
        block_on_error: bool,
    ):
        self.moderator = moderator
        self.metrics = metrics
        self.offload = offload
        self.timeout = timeout
        self.block_on_error = block_on_error
        self._places = threading.BoundedSemaphore(max(1, concurrency))
        self._threaded = isinstance(moderator, CallableModerator)

    def run(self, texts: list[str], point: str) -> list[Verdict]:
        """A verdict per text; ``point`` (input, window, final) labels the count."""
        started = time.monotonic()
        try:
            verdicts = self._call(texts)
        except Exception as exc:
            reason = "timeout" if _timed_out(exc) else "error"
            self.metrics.failures.labels(reason).inc()
            self.metrics.checks.labels(point, "failed").inc()
            log.warning(
                "moderation check failed (%s: %s); %s",
                reason,
                type(exc).__name__,
                "blocking" if self.block_on_error else "allowing",
            )
            return [Verdict(self.block_on_error, failed=True) for _ in texts]
        finally:
            self.metrics.latency.observe(time.monotonic() - started)
        flagged = [verdict for verdict in verdicts if verdict.flagged]
        self.metrics.checks.labels(point, "flagged" if flagged else "allowed").inc()
        for verdict in flagged:
            for category in verdict.categories:
                self.metrics.flags.labels(category).inc()
        return verdicts

    def _call(self, texts: list[str]) -> list[Verdict]:
        if not self.moderator.remote:
            return self.moderator.check(texts)
        if not self._places.acquire(timeout=self.timeout):
            raise ModeratorBusy("no place for a moderation check within the timeout")
        try:
            if self._threaded:
                return self.offload.run(self.moderator.check, texts)
            return self.moderator.check(texts)
        finally:
            self._places.release()


def _timed_out(exc: Exception) -> bool:
    return isinstance(exc, (TimeoutError, openai.APITimeoutError))
