"""Moderation in calls: how many requests a remote moderator gets per answer.

The relay (gevent) moderates with ``MODERATION=openai`` against the test server's
own ``/v1/moderations`` (the upstream's base URL), in hold mode with the default
window, ``MODERATION_WINDOW_CHARS`` (200) and ``MODERATION_OVERLAP_CHARS`` (50).
``answers`` answers of the latency scenario's shape (60 tokens at 20 tokens/s after
200 ms) are asked, ``concurrency`` at a time, one Socket.IO client each; then the
test server's record of the moderation requests is read back and split into the
input's check, the windows' and the final one (the last window and the whole text).

    python -m bench.moderation [--answers 20] [--concurrency 10] [--tokens 60]

Prints ``moderation.calls_per_answer``, ``moderation.window_calls_per_answer``,
``moderation.answer_chars`` (mean characters an answer had),
``moderation.window_chars`` (mean characters a window call checked) and
``moderation.answers_whole`` (answers that arrived exactly).
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import socketio

from .common import expected_text, upstream_prompt
from .servers import Upstream, start_target, unwind_on_signals

REMOTE = {"MODERATION": "openai", "MODERATION_MODE": "hold"}


@dataclass
class ModerationConfig:
    answers: int = 20
    concurrency: int = 10
    ttft: float = 0.2
    tps: float = 20.0
    tokens: int = 60


def measure(config: ModerationConfig, log=print) -> dict[str, Any]:
    """Ask the answers through the moderated relay; count the moderator's calls."""
    upstream = Upstream(config.ttft, config.tps, config.tokens)
    try:
        server = start_target(
            "relay-gevent",
            upstream=upstream,
            demo=None,
            connections=config.concurrency,
            extra_env=REMOTE,
        )
        try:
            prompts = [
                f"Moderated answer {n} "
                + upstream_prompt(config.ttft, config.tps, config.tokens)
                for n in range(config.answers)
            ]
            with ThreadPoolExecutor(config.concurrency) as pool:
                texts = list(pool.map(lambda p: _answer(server.url, p), prompts))
        finally:
            server.stop()
        with urllib.request.urlopen(upstream.url + "/_moderations", timeout=10) as got:
            records = json.load(got)
    finally:
        upstream.stop()
    whole = sum(
        text == expected_text("upstream", prompt, config.tokens)
        for prompt, text in zip(prompts, texts, strict=True)
    )
    inputs = [r for r in records if r["input"] and r["input"][0] in prompts]
    finals = [r for r in records if r["input"] and r["input"][-1] in texts]
    windows = [r for r in records if r not in inputs and r not in finals]
    window_chars = [len(text) for r in windows for text in r["input"]]
    result = {
        "answers": config.answers,
        "answers_whole": whole,
        "calls": len(records),
        "input_calls": len(inputs),
        "window_calls": len(windows),
        "final_calls": len(finals),
        "calls_per_answer": round(len(records) / config.answers, 2),
        "window_calls_per_answer": round(len(windows) / config.answers, 2),
        "answer_chars": round(sum(map(len, texts)) / config.answers, 1),
        "window_chars": round(sum(window_chars) / max(len(window_chars), 1), 1),
    }
    log(f"moderation: {result['calls']} calls for {config.answers} answers")
    return result


def _answer(url: str, prompt: str) -> str:
    """One answer's text, over a Socket.IO connection of its own."""
    client = socketio.Client(reconnection=False)
    parts: dict[int, str] = {}
    end: list[dict[str, Any]] = []
    changed = threading.Condition()

    def on(event: str, data: dict[str, Any]) -> None:
        with changed:
            if event == "chunk":
                parts[data["seq"]] = data["delta"]
            else:
                end.append(data)
            changed.notify_all()

    for event in ("chunk", "done", "error"):
        client.on(event, lambda data, event=event: on(event, data))
    client.connect(url, transports=["websocket"], wait_timeout=10)
    try:
        client.emit("chat", {"id": "m", "message": prompt})
        # Each event is handled on a thread of its own: the done may come first.
        with changed:
            if not changed.wait_for(
                lambda: end and len(parts) >= end[0].get("chunks", 0), 60
            ):
                raise TimeoutError("no end within 60 s")
    finally:
        client.disconnect()
    return "".join(parts[seq] for seq in sorted(parts))


def print_figures(result: dict[str, Any]) -> None:
    for key in (
        "calls_per_answer",
        "window_calls_per_answer",
        "answer_chars",
        "window_chars",
        "answers_whole",
    ):
        print(f"moderation.{key}: {result[key]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=ModerationConfig.answers)
    parser.add_argument("--concurrency", type=int, default=ModerationConfig.concurrency)
    parser.add_argument("--tokens", type=int, default=ModerationConfig.tokens)
    args = parser.parse_args()
    unwind_on_signals()
    config = ModerationConfig(args.answers, args.concurrency, tokens=args.tokens)
    print_figures(measure(config))


if __name__ == "__main__":
    main()
