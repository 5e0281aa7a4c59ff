"""Every start command the README names boots with no ``ASYNC_MODE`` set, in the
async mode of the server that runs it, and streams an answer; an ``ASYNC_MODE`` that
contradicts the server stops it with one line."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.servers import stop

from .conftest import (
    ROOT,
    Recorder,
    ServerProcess,
    free_port,
    relay_env,
    upstream_text,
    wait_until,
)

GUNICORN = [sys.executable, "-m", "gunicorn"]
# Each command, as the README gives it, and the async mode it must run in.
COMMANDS = {
    "gunicorn -k eventlet": (GUNICORN + ["-k", "eventlet", "-w", "1"], "eventlet"),
    "gunicorn -k gevent": (GUNICORN + ["-k", "gevent", "-w", "1"], "gevent"),
    "gunicorn -k gthread": (
        GUNICORN + ["-k", "gthread", "-w", "1", "--threads", "50"],
        "threading",
    ),
    "python wsgi.py": ([sys.executable, "wsgi.py"], "gevent"),
}


def command_line(command: str, port: int) -> list[str]:
    args, _ = COMMANDS[command]
    if args[0:3] == GUNICORN:
        return args + ["--bind", f"127.0.0.1:{port}", "wsgi:app"]
    return args  # python wsgi.py listens on HOST:PORT


@pytest.mark.parametrize("command", COMMANDS)
def test_start_command_boots_in_its_servers_mode_and_streams_an_exact_answer(
    command, tmp_session, upstream, monkeypatch
):
    monkeypatch.delenv("ASYNC_MODE", raising=False)
    mode = COMMANDS[command][1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        command_line(command, port),
        {
            **relay_env(upstream),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        },
        tmp_session / f"start-{command.replace(' ', '_')}-{port}.log",
    )
    try:
        server.wait_http(url + "/healthz")
        client = Recorder(url)
        prompt = f"started by {command}"
        try:
            assert client.chat("a", prompt)["ok"]
            assert client.wait_end("a")[0] == "done"
            assert client.text("a") == upstream_text(prompt)
        finally:
            client.close()
        log = server.log_text()
        assert f"async mode {mode} " in log
        if mode == "gevent":
            # The default: a user's first start shows no warning.
            assert "warn" not in log.lower()
    finally:
        server.stop()


def run_until_exit(args: list[str], async_mode: str, tmp: Path) -> tuple[int, str]:
    """Run ``args`` with ``ASYNC_MODE`` set, wait for it to exit by itself (a restart
    loop never does), and return its exit code and stderr."""
    env = {k: v for k, v in os.environ.items() if k != "ASYNC_MODE"}
    env.update(ASYNC_MODE=async_mode, LLM_PROVIDER="demo", PYTHONUNBUFFERED="1")
    with open(tmp / "stderr", "w+") as stderr:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=stderr, stderr=stderr, text=True
        )
        try:
            wait_until(lambda: proc.poll() is not None, 60, "the server to exit")
        finally:
            stop(proc, sig=signal.SIGQUIT)
        stderr.seek(0)
        return proc.returncode, stderr.read()


@pytest.mark.parametrize(
    ("async_mode", "worker", "line"),
    [
        (
            "eventlet",
            ["-k", "gevent"],
            "ASYNC_MODE=eventlet contradicts gunicorn's worker, which runs gevent "
            "(-k gevent): unset ASYNC_MODE or run -k eventlet",
        ),
        (
            "gevent",
            ["-k", "gthread", "--threads", "5"],
            "ASYNC_MODE=gevent contradicts gunicorn's worker, which runs threading "
            "(-k gthread): unset ASYNC_MODE or run -k gevent",
        ),
        (
            "threading",
            ["-k", "eventlet"],
            "ASYNC_MODE=threading contradicts gunicorn's worker, which runs eventlet "
            "(-k eventlet): unset ASYNC_MODE or run -k gthread",
        ),
    ],
)
def test_async_mode_that_contradicts_the_worker_stops_gunicorn_with_one_line(
    async_mode, worker, line, tmp_path
):
    port = free_port()
    args = GUNICORN + worker + ["-w", "1", "--bind", f"127.0.0.1:{port}", "wsgi:app"]
    code, output = run_until_exit(args, async_mode, tmp_path)
    assert [said for said in output.splitlines() if "ASYNC_MODE" in said] == [line]
    assert "Traceback" not in output
    # gunicorn halted (its exit code for an app that cannot load), and did not start
    # the worker again.
    assert code == 4
    assert output.count("Booting worker") == 1


def test_unknown_async_mode_stops_python_wsgi_py_with_one_line(tmp_path):
    code, output = run_until_exit([sys.executable, "wsgi.py"], "asyncio", tmp_path)
    assert output == "ASYNC_MODE=asyncio is not one of gevent, eventlet, threading\n"
    assert code == 1
