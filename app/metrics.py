"""Prometheus metrics, served at ``GET /metrics``."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The relay's counters, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "chat_connections", "Open Socket.IO connections", registry=self.registry
        )
        self.active_streams = Gauge(
            "chat_active_streams",
            "Generations running now, by the transport they started on",
            ["transport"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "chat_ttft_seconds",
            "Time from an accepted chat to its first chunk",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.requests = Counter(
            "chat_requests",
            "Chats accepted, by transport (socketio, http, responses)",
            ["transport"],
            registry=self.registry,
        )
        self.chunks = Counter(
            "chat_chunks_sent", "Chunk events sent to clients", registry=self.registry
        )
        self.coalesced = Counter(
            "chat_coalesced_frames",
            "Chunk events that carried more than one upstream delta (coalescing)",
            registry=self.registry,
        )
        self.finished = Counter(
            "chat_finished",
            "Requests ended with done, by finish reason",
            ["finish_reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "chat_errors",
            "Requests ended with an error event, by code",
            ["code"],
            registry=self.registry,
        )
        self.abandoned = Counter(
            "chat_abandoned",
            "Generations cancelled because their client did not come back",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "chat_loop_lag_seconds",
            "How late the server wakes its tasks (moving average; measured while "
            "streams are paced)",
            registry=self.registry,
        )
        self.slow_clients = Counter(
            "chat_slow_clients_closed",
            "Connections closed because the client stopped reading",
            registry=self.registry,
        )
        self.sessions = Gauge(
            "chat_engineio_sessions",
            "Open Engine.IO sessions, connected or not yet (what MAX_CONNECTIONS caps)",
            registry=self.registry,
        )
        self.refused = Counter(
            "chat_connections_refused",
            "Connections refused (a handshake, or a Socket.IO connect), by code",
            ["code"],
            registry=self.registry,
        )
        self.resumes = Counter(
            "chat_resumes", "Successful resumes", registry=self.registry
        )
        self.oversized = Counter(
            "chat_oversized_messages",
            "Connections closed for a message over MAX_MESSAGE_BYTES, by transport "
            "(websocket, polling)",
            ["transport"],
            registry=self.registry,
        )
        self.malformed = Counter(
            "chat_malformed_packets",
            "Engine.IO or Socket.IO packets dropped because they could not be decoded",
            registry=self.registry,
        )
