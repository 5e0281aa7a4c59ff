"""Fixtures: real server processes on loopback ports, and clients that record events."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from bench.postgres import PostgresServer
from bench.servers import stop

# An app built in this process (tests/test_handlers.py) keeps its conversations and
# its owner cookie's secret in a directory of its own, not under the repository.
_IN_PROCESS = Path(tempfile.mkdtemp(prefix="chatstream-tests-"))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{_IN_PROCESS / 'history.db'}")
os.environ.setdefault("OWNER_SECRET_FILE", str(_IN_PROCESS / "owner_secret"))

ROOT = Path(__file__).resolve().parent.parent
# What the relay sends upstream; it must never reach a client or a log line.
UPSTREAM_KEY = "sk-test-7Hq2mZp9VwL4xK8sN3bR5tY1uC6dE0fA"
# The relay, resume, gap, guard and cluster tests run in each of these (the
# ``async_mode`` fixture); the Python client's and the page's in the default alone.
ASYNC_MODES = ["eventlet", "gevent", "threading"]
DEFAULT_ASYNC_MODE = "gevent"
# Every test client connects from 127.0.0.1, which is one identity to the per-user
# limits and one address to the connection limits; tests of those limits set their
# own.
UNLIMITED = {
    "MAX_STREAMS_PER_IDENTITY": "100000",
    "CHATS_PER_MINUTE": "1000000",
    "MAX_CONNECTIONS_PER_IDENTITY": "100000",
    "MAX_CONNECTIONS_PER_ADDRESS": "100000",
    "HANDSHAKES_PER_MINUTE": "1000000",
}
# Tests that count chunks or name a seq want one event per upstream chunk, whatever
# the machine's load: coalescing (on by default, while busy) has tests of its own.
ONE_EVENT_PER_CHUNK = {"COALESCE_WINDOW_MS": "0"}


def pytest_addoption(parser):
    parser.addoption(
        "--soak-long",
        action="store_true",
        help="run the soak test at full size (200 clients for 60 s)",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 15, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true, and return that; fail
    after ``timeout`` seconds, a bound a working server never comes near."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return result


def hold_emits(chat: Any, event: str, until=lambda payload: True) -> list[dict]:
    """Make a ChatClient's connection hold each ``event`` it sends until
    ``until(payload)`` is true; return a list of ``{"payload", "ack"}``, one added
    as each goes out, its ack filled in when the server answers."""
    sent: list[dict] = []
    emit = chat._sio.emit

    def holding(name: str, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        if name == event:
            wait_until(lambda: until(data), what=f"the moment to send {event}")
            entry = {"payload": data, "ack": None}
            sent.append(entry)
            callback = kwargs.get("callback")
            if callback is not None:

                def acked(*ack: Any) -> Any:
                    entry["ack"] = ack[0] if ack else None
                    return callback(*ack)

                kwargs["callback"] = acked
        return emit(name, data, *args, **kwargs)

    chat._sio.emit = holding
    return sent


class ServerProcess:
    """A server started as a child process, with its output kept in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop)
        # Each server keeps its conversations and owner secret beside its log (a
        # restart with the same log path finds them again), unless the test says.
        own = {
            "DATABASE_URL": f"sqlite:///{log_path.with_suffix('.db')}",
            "OWNER_SECRET_FILE": str(log_path.with_suffix(".secret")),
        }
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **own, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_http(self, url: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answered, if only to refuse
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer {url}:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop(self.proc, 10, sig=sig)
        self._log.close()


class Relay:
    """A relay server process: gunicorn with the worker class of its async mode,
    serving ``app`` (gunicorn's module:variable, or module:factory())."""

    def __init__(
        self, tmp: Path, async_mode: str, env: dict[str, str], app: str = "wsgi:app"
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.async_mode = async_mode
        self.process = ServerProcess(
            [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", app],
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "ASYNC_MODE": async_mode,
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            tmp / f"relay-{async_mode}-{self.port}.log",
        )
        self.process.wait_http(self.url + "/healthz")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
            return json.load(response)

    def quit(self) -> None:
        """Stop at once (SIGQUIT, gunicorn's quick shutdown), for a relay whose
        graceful drain is not under test."""
        self.process.stop(signal.SIGQUIT)

    def wait_idle(self, timeout: float = 15) -> None:
        """Wait until no stream is live (ended ones may still be kept), a generation
        running on for a client that dropped included."""
        wait_until(lambda: self.health()["live_streams"] == 0, timeout, "no streams")

    def wait_log(self, text: str, timeout: float = 15) -> None:
        wait_until(lambda: text in self.process.log_text(), timeout, repr(text))


class Upstream:
    """The OpenAI-compatible test server, and what it recorded of each request."""

    def __init__(self, tmp: Path, *args: str):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"
        self.process = ServerProcess(
            [sys.executable, "-m", "tests.openai_server", "--port", str(port), *args],
            {"PYTHONUNBUFFERED": "1"},
            tmp / f"upstream-{port}.log",
        )
        self.process.wait_http(self.url + "/v1/models")

    def requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/_requests", timeout=5) as response:
            return json.load(response)

    def find(self, marker: str) -> dict[str, Any]:
        """The one recorded request whose last message's text (``prompt``: its
        content, or its text parts joined) contains ``marker``."""
        found = [r for r in self.requests() if marker in (r["prompt"] or "")]
        assert len(found) == 1, f"{len(found)} upstream requests contain {marker!r}"
        return found[0]

    def wait_outcome(self, marker: str, timeout: float = 15) -> dict[str, Any]:
        """Wait for the request holding ``marker`` to end; return its record."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.find(marker)
            if record["ended_at"] is not None or time.monotonic() > deadline:
                return record
            time.sleep(0.05)


class Recorder:
    """A python-socketio client that records every event it receives, in order."""

    def __init__(
        self, url: str, client_options: dict[str, Any] | None = None, **connect: Any
    ):
        self.events: list[tuple[str, Any]] = []
        self.resumed_after: dict[str, int] = {}
        self._changed = threading.Condition()
        self.sio = socketio.Client(reconnection=False, **(client_options or {}))
        # ``retract`` takes chunks back (moderation's stream mode).
        for name in ("chunk", "done", "error", "retract"):
            self.sio.on(name, self._recorder(name))
        # What the server announces about the owner's conversations, apart.
        self.notices: list[tuple[str, Any]] = []
        for name in ("conversation", "conversation_deleted"):
            self.sio.on(name, self._noticer(name))
        self.sio.connect(url, wait_timeout=10, **connect)

    def _recorder(self, name: str):
        def record(data: Any) -> None:
            with self._changed:
                self.events.append((name, data))
                self._changed.notify_all()

        return record

    def _noticer(self, name: str):
        def record(data: Any) -> None:
            with self._changed:
                self.notices.append((name, data))
                self._changed.notify_all()

        return record

    def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        ack = self.sio.call(event, data, timeout=timeout)
        if event == "resume" and isinstance(ack, dict) and ack.get("ok"):
            # This connection holds nothing up to ``after``: it was sent elsewhere.
            self.resumed_after[data["id"]] = data["after"]
        return ack

    def chat(self, request_id: str, prompt: str, **fields: Any) -> Any:
        return self.call("chat", {"id": request_id, "message": prompt, **fields})

    def of(self, request_id: str) -> list[tuple[str, Any]]:
        return [(n, d) for n, d in self.events if d.get("id") == request_id]

    def wait(self, predicate, timeout: float = 15) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"timed out; events so far: {self.events[-5:]}")

    def wait_end(self, request_id: str, timeout: float = 15) -> tuple[str, Any]:
        """Wait for the request's terminal event, and for every chunk it counts
        (python-socketio hands each event to a thread of its own, so a ``done`` can
        be handled before the last chunks); return the terminal event."""

        def ended(recorder: "Recorder") -> bool:
            end = recorder.terminal(request_id)
            if end is None:
                return False
            seqs = {chunk["seq"] for chunk in recorder.chunks(request_id)}
            expected = end[1].get("chunks", 0) - recorder.resumed_after.get(
                request_id, -1
            )
            return end[0] != "done" or len(seqs) >= expected - 1

        self.wait(ended, timeout)
        return self.terminal(request_id)

    def terminal(self, request_id: str) -> tuple[str, Any] | None:
        ends = [(n, d) for n, d in self.of(request_id) if n in ("done", "error")]
        return ends[0] if ends else None

    def chunks(self, request_id: str) -> list[dict[str, Any]]:
        """The request's chunks in ``seq`` order (handlers may run out of order)."""
        chunks = [d for n, d in self.of(request_id) if n == "chunk"]
        return sorted(chunks, key=lambda chunk: chunk["seq"])

    def text(self, request_id: str) -> str:
        return "".join(c["delta"] for c in self.chunks(request_id))

    def cut(self) -> None:
        """Drop the transport under the client, as a network failure would, and wait
        for the client to notice: every event it received is being handled."""
        self.sio.eio.ws.sock.shutdown(socket.SHUT_RDWR)
        wait_until(lambda: not self.sio.connected, what="the client to see the cut")

    def close(self) -> None:
        self.sio.disconnect()


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory) -> Path:
    """A folder for the server processes' logs."""
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def upstream(tmp_session) -> Iterator[Upstream]:
    """The OpenAI-compatible test server, demanding the relay's API key."""
    server = Upstream(
        tmp_session, "--api-key", UPSTREAM_KEY, "--ttft", "0.02", "--tps", "100"
    )
    yield server
    server.process.stop()


SYSTEM_PROMPT = "You are a test assistant."


def upstream_text(prompt: str, tokens: int = 30, first: int | None = None) -> str:
    """What the test server answers the relay for ``prompt`` (with the relay's system
    prompt): a reply of ``tokens`` words, or only its ``first`` words when the stream
    was cut short."""
    from .openai_server import build_reply

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    return "".join(build_reply(messages, tokens)[:first])


def upstream_reasoning(prompt: str, words: int) -> str:
    """The reasoning text the test server streams for ``prompt`` behind the relay."""
    from .openai_server import build_reasoning

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    return "".join(build_reasoning(messages, words))


def relay_env(upstream: Upstream, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLM_MODEL": "test-model",
        "LLM_MODELS": "test-model,other-model",
        "SYSTEM_PROMPT": SYSTEM_PROMPT,
        "UPSTREAM_READ_TIMEOUT": "1.5",
        "UPSTREAM_MAX_RETRIES": "0",
        "RESUME_GRACE_SECONDS": "2",
        **UNLIMITED,
        **ONE_EVENT_PER_CHUNK,
        **extra,
    }


@pytest.fixture(scope="session", params=ASYNC_MODES)
def async_mode(request) -> str:
    """Each async mode in turn: a test that uses it, or a relay fixture that does,
    runs once per mode (pytest groups the tests by mode)."""
    return request.param


@pytest.fixture(scope="session")
def relay(async_mode, tmp_session, upstream) -> Iterator[Relay]:
    """The relay in front of the test server, under gunicorn in each async mode."""
    server = Relay(tmp_session, async_mode, relay_env(upstream))
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def postgres(tmp_session) -> Iterator[PostgresServer]:
    """A PostgreSQL server on a loopback port (Debian's postgresql), fsync off."""
    server = PostgresServer(tmp_session)
    yield server
    server.close()


@pytest.fixture(scope="session")
def demo_server(tmp_session) -> Iterator[Relay]:
    """The relay on the offline demo model, paced fast, in the default async mode."""
    server = Relay(
        tmp_session,
        DEFAULT_ASYNC_MODE,
        {
            "LLM_PROVIDER": "demo",
            "DEMO_TTFT": "0.05",
            "DEMO_TOKENS_PER_SECOND": "400",
            **UNLIMITED,
            **ONE_EVENT_PER_CHUNK,
        },
    )
    yield server
    server.process.stop()


@pytest.fixture
def connect(relay) -> Iterator:
    """Opens recording clients to the relay and closes them after the test."""
    clients: list[Recorder] = []

    def open_client(url: str | None = None, **options: Any) -> Recorder:
        client = Recorder(url or relay.url, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()
