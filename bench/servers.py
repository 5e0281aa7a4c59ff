"""The processes under test: the upstream test server, the relay and the peers.

Every server listens on 127.0.0.1 on a free port and logs to bench/results/logs/.
``Server.worker`` is the process that does the work (gunicorn's single worker, or
the server itself), whose CPU and memory the benchmark reads.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .procstat import children

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "bench" / "results" / "logs"
UPSTREAM_KEY = "sk-bench-not-a-secret"
# Signs the load generator's owner cookies, so that the relay keeps every client's
# chats in its conversation store as it keeps a browser's (bench/loadgen.py).
OWNER_SECRET = "bench-owner-secret"
# The model the relay's openai provider asks the test server for, as the direct
# clients do.
UPSTREAM_MODEL = "test-model"


def unwind_on_signals() -> None:
    """Make SIGINT and SIGTERM raise, so ``finally`` stops every server started.

    (A background job starts with SIGINT ignored, and SIGTERM kills at once.)"""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _scratch() -> str:
    return tempfile.mkdtemp(prefix="chatstream-bench-")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        port: int,
        health: str,
        gunicorn: bool,
    ):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}-{port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_http(self.url + health)
        self.worker = self._find_worker() if gunicorn else self.proc.pid

    def _wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url}:\n{self.log_text()}")

    def _find_worker(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = children(self.proc.pid)
            if len(found) == 1:
                return found[0]
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no single gunicorn worker found")

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.worker == self.proc.pid:
            stop(self.proc)
        else:
            # The measurement is over: gunicorn's quick shutdown (SIGQUIT) instead
            # of a graceful drain, which takes an idle eventlet worker ~3 s.
            stop(self.proc, worker=self.worker, sig=signal.SIGQUIT)
        self._log.close()


def stop(
    proc: subprocess.Popen,
    timeout: float = 15.0,
    *,
    worker: int | None = None,
    sig: int = signal.SIGTERM,
) -> None:
    """End a server process: ``sig``, up to ``timeout`` s to exit, then SIGKILL.

    ``worker``: a process it forked (gunicorn's worker), ended too if it is still
    there: a worker outlives a killed master for a while, and must not share the
    machine with the next measurement.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if worker is not None:
        _end_fork(worker, proc.args)


def _end_fork(pid: int, args: list[str]) -> None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return  # gone
    # A fork keeps its parent's command line (gunicorn renames it only when
    # setproctitle is installed); any other means the number was taken again.
    forked = cmdline.split(b"\0")[:-1] == [os.fsencode(str(a)) for a in args]
    if not (forked or b"gunicorn" in cmdline):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
                return
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


class Upstream(Server):
    """``tests/openai_server/``: the OpenAI-compatible streaming test server."""

    def __init__(self, ttft: float, tps: float, reply_tokens: int):
        port = free_port()
        args = [sys.executable, "-m", "tests.openai_server", "--port", str(port)]
        args += ["--ttft", str(ttft), "--tps", str(tps)]
        args += ["--reply-tokens", str(reply_tokens), "--api-key", UPSTREAM_KEY]
        super().__init__("upstream", args, {}, port, "/v1/models", gunicorn=False)
        self.base_url = self.url + "/v1"


# The relay with keyword moderation in hold mode (app/moderation): words the test
# server never says, so that every answer is checked and held, and none is cut.
MODERATED = {
    "MODERATION": "keywords",
    "MODERATION_KEYWORDS": "zorblax,grimthorpe,forbidden phrase",
    "MODERATION_MODE": "hold",
}


# The relay and the peers, each as the process that runs it. ``demo`` pacing is
# given by DEMO_TTFT / DEMO_TOKENS_PER_SECOND; without it they call the upstream.
# ``kind`` is the load generator's client; ``path``, where that client is pointed.
TARGETS = {
    "relay-eventlet": {"kind": "sio", "server": "relay", "async_mode": "eventlet"},
    "relay-gevent": {"kind": "sio", "server": "relay", "async_mode": "gevent"},
    "relay-threading": {"kind": "sio", "server": "relay", "async_mode": "threading"},
    # The same relay process, read over its OpenAI-compatible HTTP transport
    # (POST /v1/chat/completions, stream: true) by the reader that reads the test
    # server in the no-relay series.
    "relay-gevent-sse": {
        "kind": "openai-http",
        "server": "relay",
        "async_mode": "gevent",
        "path": "/v1",
    },
    # Over its Responses API (POST /v1/responses, stream: true), read by the same
    # raw reader.
    "relay-gevent-responses": {
        "kind": "responses-http",
        "server": "relay",
        "async_mode": "gevent",
        "path": "/v1",
    },
    # Moderated: every answer checked by keywords in hold mode (app/moderation), none
    # of which the test server's answers hold. Not in the default run: name it.
    "relay-gevent-moderated": {
        "kind": "sio",
        "server": "relay",
        "async_mode": "gevent",
        "env": MODERATED,
        "default": False,
    },
    # Keeping no conversations (HISTORY=false): what the store costs, against
    # relay-gevent. Not in the default run: name it.
    "relay-gevent-no-history": {
        "kind": "sio",
        "server": "relay",
        "async_mode": "gevent",
        "env": {"HISTORY": "false"},
        "default": False,
    },
    "fastapi-sse": {"kind": "sse", "server": "uvicorn", "app": "fastapi_sse"},
    "flask-stream": {"kind": "sse", "server": "gthread", "app": "flask_stream"},
    "naive-sio": {"kind": "sio", "server": "eventlet", "app": "naive_socketio"},
    "sio-asgi": {"kind": "sio", "server": "uvicorn", "app": "python_socketio_asgi"},
}


# What a run without --targets measures.
DEFAULT_TARGETS = [name for name, spec in TARGETS.items() if spec.get("default", True)]


def target_name(base: str, coalesce_ms: int | None) -> str:
    """``base`` runs with the relay's defaults; ``+coalesce<N>ms`` sets the window."""
    return base if coalesce_ms is None else f"{base}+coalesce{coalesce_ms}ms"


def parse_target(name: str) -> tuple[str, int | None]:
    match = re.fullmatch(r"(.+?)(?:\+coalesce(\d+)ms)?", name)
    assert match, name
    window = match.group(2)
    return match.group(1), None if window is None else int(window)


def client_url(name: str, server: Server) -> str:
    """Where the load generator points its clients at target ``name``."""
    return server.url + TARGETS[parse_target(name)[0]].get("path", "")


def start_target(
    name: str,
    *,
    upstream: Upstream | None,
    demo: tuple[float, float] | None,
    connections: int,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start a target in front of ``upstream``, or on its paced demo source;
    ``extra_env`` adds to a relay's environment.

    ``connections`` sizes the thread pools of thread-per-connection servers.
    """
    base, coalesce_ms = parse_target(name)
    spec = TARGETS[base]
    port = free_port()
    # The relay under gthread takes 90 % of its threads in connections (the rest
    # stay free for /healthz and the like: app/admission.py).
    threads = str(max(200, connections * 10 // 9 + 64))
    # Open connections a worker accepts: gunicorn's default (1000) would refuse
    # the rest. deploy/gunicorn.conf.py reads it for the relay in every mode.
    worker_connections = str(max(10000, connections + 100))
    env = {"HOST": "127.0.0.1", "PORT": str(port), "THREADS": threads}
    if demo is not None:
        env |= {
            "LLM_PROVIDER": "demo",
            "DEMO_TTFT": str(demo[0]),
            "DEMO_TOKENS_PER_SECOND": str(demo[1]),
        }
    else:
        assert upstream is not None
        env |= {
            "LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": upstream.base_url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "LLM_MODEL": UPSTREAM_MODEL,
            "UPSTREAM_MAX_RETRIES": "0",
        }
    gunicorn = [sys.executable, "-m", "gunicorn"]
    if spec["server"] == "relay":
        env |= {
            "ASYNC_MODE": spec["async_mode"],
            "SYSTEM_PROMPT": "",
            # A store of its own for each run, outside the repository.
            "DATABASE_URL": f"sqlite:///{_scratch()}/conversations-{port}.db",
            "OWNER_SECRET": OWNER_SECRET,
            "WORKER_CONNECTIONS": worker_connections,
            # Each client has its own address (loadgen.source_address), so the
            # per-user limits apply per client; this only keeps a fast quick-mode
            # client under the per-minute cap.
            "CHATS_PER_MINUTE": "600",
        }
        env |= spec.get("env", {}) | (extra_env or {})
        if coalesce_ms is not None:
            env["COALESCE_WINDOW_MS"] = str(coalesce_ms)
        args = gunicorn + ["-c", "deploy/gunicorn.conf.py", "wsgi:app"]
        health = "/healthz"
    elif spec["server"] == "uvicorn":
        args = [sys.executable, "-m", "uvicorn", f"bench.peers.{spec['app']}:app"]
        args += ["--host", "127.0.0.1", "--port", str(port)]
        args += ["--log-level", "warning", "--no-access-log"]
        args += ["--backlog", "4096"]
        # A plain ``pip install uvicorn websockets``, whatever else the venv holds
        # (auto would pick uvloop and httptools when installed); WebSocket
        # options at uvicorn's defaults, permessage-deflate included.
        args += ["--loop", "asyncio", "--http", "h11", "--ws", "websockets-sansio"]
        health = "/healthz"
    else:
        worker = ["-k", "gthread", "--threads", threads]
        if spec["server"] == "eventlet":
            worker = ["-k", "eventlet"]
        worker += ["--worker-connections", worker_connections]
        args = gunicorn + ["-w", "1", *worker, "-b", f"127.0.0.1:{port}"]
        args += ["--timeout", "60", "--backlog", "4096"]
        args += [f"bench.peers.{spec['app']}:app"]
        health = "/healthz"
    return Server(name, args, env, port, health, gunicorn=spec["server"] != "uvicorn")
