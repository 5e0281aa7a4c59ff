"""Running the server: ``python -m tests.openai_server --port 0 ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence

from .endpoints import Service, Settings
from .http11 import Connection
from .streams import Pacer


async def serve(
    settings: Settings,
    sock: socket.socket,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve on the bound socket `sock` until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    service = Service(settings, Pacer(loop))
    server = await loop.create_server(
        lambda: Connection(service), sock=sock, backlog=2048
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if on_ready is not None:
        on_ready()
    async with server:
        await stop.wait()
        server.close()
        for connection in list(service.connections):
            connection.abort()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.openai_server",
        description="OpenAI-compatible streaming test server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument(
        "--ttft", type=float, default=Settings.ttft, help="seconds to first word"
    )
    parser.add_argument(
        "--tps", type=float, default=Settings.tps, help="words per second; 0: no delay"
    )
    parser.add_argument(
        "--reply-tokens", type=int, default=Settings.reply_tokens, help="reply length"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TEST_SERVER_API_KEY"),
        help="required bearer key (default $TEST_SERVER_API_KEY; none: open)",
    )
    parser.add_argument(
        "--models", default="", help="comma-separated models served; default any"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server until interrupted."""
    args = parse_args(argv)
    settings = Settings(
        ttft=args.ttft,
        tps=args.tps,
        reply_tokens=args.reply_tokens,
        api_key=args.api_key or None,
        models=tuple(name.strip() for name in args.models.split(",") if name.strip()),
    )
    logging.basicConfig(level=logging.WARNING)
    # Binding here lets --port 0 report the port it got.
    sock = socket.create_server((args.host, args.port), backlog=2048)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host

    def announce() -> None:
        print(f"listening on http://{host}:{port}", flush=True)

    asyncio.run(serve(settings, sock, announce))
