"""The moderator's figures, served at ``GET /metrics`` with the relay's."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ModerationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.checks = Counter(
            "chat_moderation_checks",
            "Moderation checks, by what was checked (input, window, final) and "
            "result (allowed, flagged, failed)",
            ["point", "result"],
            registry=registry,
        )
        self.flags = Counter(
            "chat_moderation_flags",
            "Texts flagged by the moderator, by category",
            ["category"],
            registry=registry,
        )
        self.failures = Counter(
            "chat_moderation_failures",
            "Moderation checks that failed (timeout, error); MODERATION_ON_ERROR "
            "decided what they meant",
            ["reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "chat_moderation_check_seconds",
            "Time one moderation check took (a call of the moderator)",
            buckets=(0.0005, 0.002, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.held = Gauge(
            "chat_moderation_held_chars",
            "Characters of answers held back now until their window passes (hold mode)",
            registry=registry,
        )
