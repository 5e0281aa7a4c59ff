"""A throwaway PostgreSQL server on a loopback port, for the tests and the history
benchmark: Debian's ``postgresql`` binaries, a cluster made by ``initdb`` in a fresh
temporary folder (removed by ``close``), run as the ``postgres`` user when this runs
as root (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .servers import free_port, stop


def binaries() -> Path:
    """The folder of the newest installed PostgreSQL's server programs."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL is not installed: scripts/install_packages.sh installs it"
        )
    return Path(os.path.realpath(initdb)).parent


class PostgresServer:
    """``durable=False`` (the tests) turns fsync off: faster, and nothing is kept."""

    def __init__(self, log_dir: Path, durable: bool = False):
        self.bin = binaries()
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log_path = log_dir / f"postgres-{self.port}.log"
        self.dir = Path(tempfile.mkdtemp(prefix="chatstream-pg-"))
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            shutil.chown(self.dir, self.user)
        self.durable = durable
        self.proc: subprocess.Popen | None = None
        self._log = open(self.log_path, "a")  # noqa: SIM115  (closed in close)
        subprocess.run(
            [self.bin / "initdb", "-D", self.dir / "data", "-U", "postgres"]
            + ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            user=self.user,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            check=True,
        )
        self.start()

    def start(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
            "max_connections": "200",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off"}
        args = [self.bin / "postgres", "-D", self.dir / "data", "-p", str(self.port)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        self.proc = subprocess.Popen(
            args, user=self.user, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_path.read_text()}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop at once: SIGINT is PostgreSQL's fast shutdown, which closes the
        clients' connections (SIGTERM would wait for them to leave)."""
        if self.proc is not None:
            stop(self.proc, 15, sig=signal.SIGINT)
            self.proc = None

    def close(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
