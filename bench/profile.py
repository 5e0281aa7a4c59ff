"""Where the relay's time goes under load: py-spy on its gunicorn worker.

Runs the capacity load (N streams at 50 tokens/s, kept in flight) against one relay,
from ``tests/openai_server/`` over HTTP (``--source upstream``, the default) or from
the relay's demo model (``--source demo``), and, after the warm-up, records the
worker with py-spy twice: a raw profile, summarised here as the functions with the
most samples (own time and inclusive time), then a flame graph (profile.svg).

    python -m bench.profile [--streams 1000] [--target relay-eventlet] [--seconds 12]
        [--source upstream|demo]

Needs py-spy (``pip install py-spy``) and permission to ptrace the worker (root).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from .capacity import CapacityConfig, sustained_job
from .common import DEMO_PROMPT, upstream_prompt
from .loadgen import Generators, merge
from .procstat import CpuMeter
from .servers import (
    ROOT,
    TARGETS,
    Upstream,
    client_url,
    parse_target,
    start_target,
    unwind_on_signals,
)

RESULTS = ROOT / "bench" / "results"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def summarise_raw(raw: str, top: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Own and inclusive sample shares per function from py-spy's raw format."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(frame) for frame in stack.split(";")[1:]]  # [0]: thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(n, round(100 * c / total, 1)) for n, c in counter.most_common(top)]

    return {"samples": total, "own": shares(own), "inclusive": shares(inclusive)}


# The repository's own files are named relative to it.
_ROOT = Path(__file__).resolve().parent.parent


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", f"{_ROOT}/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--target", default="relay-eventlet")
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--source", choices=("upstream", "demo"), default="upstream")
    args = parser.parse_args()
    unwind_on_signals()
    config = CapacityConfig()
    warmup = config.warmup
    upstream = None
    if args.source == "upstream":
        upstream = Upstream(config.ttft, config.rate, config.tokens)
        prompt = upstream_prompt(config.ttft, config.rate, config.tokens)
    else:
        prompt = DEMO_PROMPT
    server = start_target(
        args.target,
        upstream=upstream,
        demo=None if upstream else (config.ttft, config.rate),
        connections=args.streams,
    )
    kind = TARGETS[parse_target(args.target)[0]]["kind"]
    url = client_url(args.target, server)
    job = sustained_job(config, kind, url, args.streams, args.source, prompt)
    job = replace(job, duration=warmup + 2 * args.seconds + 6)
    generators = Generators(job, args.processes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw_path = RESULTS / "profile.raw.txt"
    svg_path = RESULTS / "profile.svg"
    try:
        generators.wait_ready()
        go = generators.go()
        time.sleep(max(go + warmup - time.monotonic(), 0))
        meter = CpuMeter({"server": server.worker})
        meter.start()
        base = [py_spy(), "record", "--pid", str(server.worker), "--rate", "100"]
        seconds = ["--duration", str(int(args.seconds))]
        subprocess.run(
            base + seconds + ["--format", "raw", "-o", str(raw_path)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            base + seconds + ["--format", "flamegraph", "-o", str(svg_path)],
            check=True,
            capture_output=True,
        )
        cpu = meter.stop()
        phase = merge(generators.results(timeout=config.stream_seconds + 60))
    finally:
        generators.close()
        server.stop()
        if upstream is not None:
            upstream.stop()
    summary = summarise_raw(raw_path.read_text())
    summary |= {
        "target": args.target,
        "streams": args.streams,
        "source": args.source,
        "server_cpu_cores": cpu["server"],
        "machine_cpu_cores": cpu["machine"],
        "delivered_fraction": round(
            phase["tokens_delivered"] / max(phase["tokens_expected"], 1), 4
        ),
    }
    (RESULTS / "profile.json").write_text(json.dumps(summary, indent=1))
    print(f"profile.server_cpu_cores: {cpu['server']}")
    print(f"profile.samples: {summary['samples']}")
    for kind in ("own", "inclusive"):
        for name, share in summary[kind]:
            print(f"profile.{kind}.{name}: {share}%")


if __name__ == "__main__":
    main()
