"""The whole benchmark in one command: added latency, capacity, idle memory.

    python -m bench                 # everything (see bench/README.md for the time)
    python -m bench --quick         # 75-100 s: proves the harness works
    python -m bench --targets relay-gevent,relay-gevent-sse --coalesce-ms 0,80

Writes bench/results/bench-<time>.json (and latest.json), a chart (bench.png) and
the README's tables (table.md), and prints one ``name: figure`` line per figure.
Capacity runs, per target, through the test server (the headline) and on a source
paced inside the server ("demo model"), and once per run with no relay at all.
A relay target runs with the relay's defaults (coalescing on, 40 ms); each N of
``--coalesce-ms`` runs it again as its own series ``<target>+coalesce<N>ms`` with
``COALESCE_WINDOW_MS=N`` in its environment (0: off).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import capacity, cluster, latency, moderation
from .common import verdict
from .servers import (
    DEFAULT_TARGETS,
    ROOT,
    TARGETS,
    Upstream,
    parse_target,
    target_name,
    unwind_on_signals,
)

RESULTS = ROOT / "bench" / "results"
# The relay in the default async mode. (Its SSE transport's latency too would add
# ~16 s, taking quick past 2 minutes: `--quick --targets relay-gevent-sse`.)
QUICK_LATENCY_TARGETS = ["relay-gevent"]
# The relay moderating every answer (keywords, hold mode), for its cost against
# relay-gevent: `--targets relay-gevent,relay-gevent-moderated --levels 100`.
MODERATED = "relay-gevent-moderated"
# The relay over Socket.IO and over its SSE transport, the Python Socket.IO
# reference and an SSE peer: every client kind.
QUICK_CAPACITY_TARGETS = ["relay-gevent", "relay-gevent-sse", "sio-asgi", "fastapi-sse"]


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(total_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "packages": _versions(
            "flask-socketio", "python-socketio", "python-engineio", "eventlet"
        )
        | _versions("gevent", "gunicorn", "openai", "uvicorn", "fastapi")
        | _versions("websockets", "httptools"),
        "git": _git_head(),
    }


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def _git_head() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def series(targets: list[str], coalesce: list[int]) -> list[str]:
    """Each target, and each relay target again per coalescing window."""
    names = []
    for target in targets:
        names.append(target)
        if target.startswith("relay"):
            names += [target_name(target, window) for window in coalesce]
    return names


def main(argv: list[str] | None = None) -> int:
    unwind_on_signals()
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--targets", help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument(
        "--coalesce-ms",
        default="",
        help="COALESCE_WINDOW_MS values (0: off) to run the relay with, each as "
        "a series of its own besides the defaults",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument(
        "--series",
        help="capacity series per target, of upstream,demo (default: both)",
    )
    parser.add_argument(
        "--skip-direct", action="store_true", help="no no-relay capacity series"
    )
    parser.add_argument("--levels", help="capacity levels, e.g. 100,250,500")
    parser.add_argument("--processes", type=int, help="load-generator processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)

    lat_config = latency.QUICK_LATENCY if args.quick else latency.LatencyConfig()
    cap_config = capacity.QUICK_CAPACITY if args.quick else capacity.CapacityConfig()
    if args.levels:
        cap_config.levels = tuple(int(n) for n in args.levels.split(","))
    if args.series:
        cap_config.series = tuple(args.series.split(","))
        for name in cap_config.series:
            if name not in capacity.SERIES:
                parser.error(f"unknown series {name!r}")
    if args.processes:
        lat_config.processes = cap_config.processes = args.processes
    coalesce = [int(v) for v in args.coalesce_ms.split(",") if v]
    if args.targets:
        lat_targets = cap_targets = args.targets.split(",")
    elif args.quick:
        lat_targets, cap_targets = QUICK_LATENCY_TARGETS, QUICK_CAPACITY_TARGETS
    else:
        lat_targets = cap_targets = list(DEFAULT_TARGETS)
    for name in lat_targets + cap_targets:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}")

    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "command": " ".join(["python -m bench", *(argv or sys.argv[1:])]),
            "quick": args.quick,
            "latency_config": vars(lat_config),
            "capacity_config": vars(cap_config),
            "coalesce_ms": coalesce,
        },
        "latency": {},
        "capacity": {},
        "direct": None,
    }

    def log(line: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "partial.json"

    def keep() -> None:  # what is done so far survives a crash or an interrupt
        partial.write_text(json.dumps(results, indent=1))

    if not args.skip_latency:
        upstream = Upstream(lat_config.ttft, lat_config.tps, lat_config.tokens)
        try:
            for target in series(lat_targets, coalesce):
                log(f"latency: {target}")
                results["latency"][target] = latency.measure_target(
                    target, upstream, lat_config, log
                )
                keep()
        finally:
            upstream.stop()
    if not args.skip_capacity:
        # (capacity starts a fresh test server for every level)
        if not args.skip_direct:
            log("capacity: no relay")
            results["direct"] = capacity.measure_direct(cap_config, log)
            keep()
        for target in series(cap_targets, coalesce):
            log(f"capacity: {target}")
            results["capacity"][target] = capacity.measure_target(
                target, cap_config, log
            )
            keep()
    if not (args.quick or args.skip_capacity or args.targets):
        results["cluster"] = cluster.run(cluster.ClusterConfig(), log)
    if MODERATED in {parse_target(name)[0] for name in lat_targets + cap_targets}:
        # The moderated target's other figure: a remote moderator's calls per answer.
        log("moderation: calls per answer")
        config = moderation.ModerationConfig(answers=4 if args.quick else 20)
        results["moderation"] = moderation.measure(config, log)
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    results["invalid"] = invalid_runs(results)

    partial.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    text = json.dumps(results, indent=1)
    (args.out / f"bench-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    from .report import chart, tables

    chart(results, args.out / "bench.png")
    (args.out / "table.md").write_text(tables(results))
    print_figures(results)
    log(f"wrote {args.out / 'latest.json'}, bench.png and table.md")
    return 0


def invalid_runs(results: dict[str, Any]) -> list[str]:
    """Every run whose figures were not used, and why."""
    found = []
    for target, result in results["latency"].items():
        for mode in ("sustained", "burst"):
            for index, run in enumerate(result[mode]["runs"]):
                if run["invalid"]:
                    reasons = "; ".join(run["invalid"])
                    found.append(f"latency {target} {mode} #{index}: {reasons}")
    named = list(results["capacity"].items())
    if results.get("direct"):
        named.insert(0, ("no relay", results["direct"]))
    for name, result in named:
        for level in capacity.all_levels(result):
            if level.get("error") or level.get("invalid"):
                where = f"{level['series']} {level['streams']}"
                if "client" in level:
                    where = f"({level['client']}) {level['streams']}"
                found.append(f"capacity {name} {where}: {verdict(level)}")
    return found


def print_figures(results: dict[str, Any]) -> None:
    for result in results["latency"].values():
        latency.print_figures(result)
    if results.get("moderation"):
        moderation.print_figures(results["moderation"])
    if results.get("direct"):
        capacity.print_direct(results["direct"])
    for result in results["capacity"].values():
        capacity.print_figures(result)
    print(f"invalid_runs: {len(results['invalid'])}")
    print(f"duration_s: {results['meta']['duration_s']}")


if __name__ == "__main__":
    raise SystemExit(main())
