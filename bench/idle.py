"""Memory per idle connection, alone: the worker's RSS over N connected, idle
Socket.IO clients (each from a loopback address of its own), minus before, / N.

The relay runs as served: ``gunicorn -c deploy/gunicorn.conf.py wsgi:app``, gevent
unless the target names another mode. The full run (``python -m bench``) measures the
same at 1000 connections after each target's capacity ramp.

    python -m bench.idle [--connections 2000] [--targets relay-gevent,relay-eventlet]
"""

from __future__ import annotations

import argparse

from .capacity import CapacityConfig, idle_rss
from .servers import unwind_on_signals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--targets", default="relay-gevent")
    args = parser.parse_args()
    unwind_on_signals()
    config = CapacityConfig(idle_connections=args.connections)
    for target in args.targets.split(","):
        idle = idle_rss(target, config)
        for key in ("connections", "connect_failures", "rss_before_mb"):
            print(f"{target}.idle.{key}: {idle[key]}")
        print(f"{target}.idle.rss_after_mb: {idle['rss_after_mb']}")
        print(f"{target}.rss_per_idle_connection_kb: {idle['rss_per_connection_kb']}")


if __name__ == "__main__":
    main()
