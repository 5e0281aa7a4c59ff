"""Added latency: what a target adds to the upstream's own stream.

For each target, in one run: N concurrent streams from the OpenAI-compatible test
server, (a) sustained (each finished stream replaced at once, the first seconds
discarded) and (b) a burst of N started together, through the target and, in the
adjacent phase, straight at the same test server with ``AsyncOpenAI`` (for a target
read over OpenAI's HTTP API, the relay's SSE transport, with the same raw HTTP
reader that reads the target, so that only the relay differs). The order of the
two phases alternates between repeats. Figures are medians over the valid
repeats of: added TTFT and added inter-chunk delay (target minus direct, p50 and
p99) and the stream duration ratio target/direct at p99.

    python -m bench.latency [--quick] [--targets relay-gevent,relay-gevent-sse]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from .common import (
    Watched,
    expected_text,
    figures,
    run_phase,
    strip_samples,
    upstream_prompt,
)
from .loadgen import Job
from .procstat import median
from .servers import (
    DEFAULT_TARGETS,
    TARGETS,
    UPSTREAM_KEY,
    UPSTREAM_MODEL,
    Upstream,
    client_url,
    parse_target,
    start_target,
    unwind_on_signals,
)


@dataclass
class LatencyConfig:
    streams: int = 100
    ttft: float = 0.2
    tps: float = 20.0
    tokens: int = 60
    duration: float = 8.0  # sustained phase: start streams for this long
    warmup: float = 3.3  # …and measure those started after this
    repeats: int = 3
    processes: int = 2
    quiet_wait: float = 20.0  # wait this long at most for other work to end

    @property
    def stream_seconds(self) -> float:
        return self.ttft + self.tokens / self.tps


QUICK_LATENCY = LatencyConfig(
    streams=20,
    tokens=20,
    duration=2.5,
    warmup=1.0,
    repeats=1,
    processes=2,
    quiet_wait=0.0,
)

ADDED = (
    ("added_ttft_p50_ms", "ttft_p50_ms"),
    ("added_ttft_p99_ms", "ttft_p99_ms"),
    ("added_gap_p50_ms", "gap_p50_ms"),
    ("added_gap_p99_ms", "gap_p99_ms"),
    # Per token of text: the fair figure when the target coalesces chunks.
    ("added_lateness_p99_ms", "lateness_p99_ms"),
)


def measure_target(
    target: str, upstream: Upstream, config: LatencyConfig, log=print
) -> dict[str, Any]:
    """Both modes for one target, each as direct/target pairs of phases."""
    kind = TARGETS[parse_target(target)[0]]["kind"]
    direct_kind = direct_client(kind)
    prompt = upstream_prompt(config.ttft, config.tps, config.tokens)
    text = expected_text("upstream", prompt, config.tokens)
    server = start_target(
        target, upstream=upstream, demo=None, connections=config.streams
    )
    url = client_url(target, server)
    out: dict[str, Any] = {"target": target, "direct_client": direct_kind}
    try:
        for mode in ("sustained", "burst"):
            runs = []
            for repeat in range(config.repeats):
                job = Job(
                    kind=kind,
                    url=url,
                    slots=config.streams,
                    mode=mode,
                    prompt=prompt,
                    max_tokens=config.tokens,
                    expected_text=text,
                    rate=config.tps,
                    duration=config.duration,
                    warmup=config.warmup,
                    stagger=config.stream_seconds,
                    stream_timeout=config.stream_seconds + 15,
                    seed=repeat,
                )
                direct_job = replace(
                    job,
                    kind=direct_kind,
                    url=upstream.base_url,
                    api_key=UPSTREAM_KEY,
                    model=UPSTREAM_MODEL,
                )
                order = [("direct", direct_job), ("target", job)]
                if repeat % 2:
                    order.reverse()
                phases = {}
                try:
                    for role, phase_job in order:
                        watched = Watched(upstream=upstream.worker)
                        if role == "target":
                            watched.server = server.worker
                        phases[role] = run_phase(
                            phase_job,
                            config.processes,
                            watched,
                            quiet_wait=config.quiet_wait,
                        )
                    run = compare(phases["direct"], phases["target"])
                except Exception as exc:  # noqa: BLE001  (recorded; the run goes on)
                    run = _failed_run(f"{type(exc).__name__}: {exc}"[:500])
                runs.append(run)
                log(
                    f"  latency {target} {mode} #{repeat}: "
                    f"+ttft p50 {run['added_ttft_p50_ms']} ms, "
                    f"+gap p99 {run['added_gap_p99_ms']} ms"
                    + (
                        f" INVALID: {'; '.join(run['invalid'])}"
                        if run["invalid"]
                        else ""
                    )
                )
            out[mode] = {"summary": summarise(runs), "runs": runs}
    finally:
        server.stop()
    return out


def direct_client(kind: str) -> str:
    """The baseline's client for a target read by ``kind``: ``AsyncOpenAI``, except
    for a target that speaks OpenAI's API itself, read by the same raw HTTP reader
    both ways so that only the relay differs."""
    return "openai-http" if kind in ("openai-http", "responses-http") else "openai"


def compare(direct: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    d, t = figures(direct), figures(target)
    run: dict[str, Any] = {name: _minus(t[key], d[key]) for name, key in ADDED}
    run["duration_ratio_p99"] = (
        round(t["duration_p99_ms"] / d["duration_p99_ms"], 4)
        if t["duration_p99_ms"] and d["duration_p99_ms"]
        else None
    )
    run["invalid"] = [f"direct: {r}" for r in direct["invalid"]] + [
        f"target: {r}" for r in target["invalid"]
    ]
    run["direct"] = {**figures(direct), **_context(direct)}
    run["target"] = {**figures(target), **_context(target)}
    run["samples"] = {
        "direct": strip_samples(direct, keep=400),
        "target": strip_samples(target, keep=400),
    }
    for role in ("direct", "target"):
        for key in ("generators", "ready", "finishes", "connect_errors"):
            run["samples"][role].pop(key, None)
    return run


def _failed_run(error: str) -> dict[str, Any]:
    empty = {"streams": 0, "complete": 0, "cpu": {"generators": []}}
    run: dict[str, Any] = {name: None for name, _ in ADDED}
    run |= {
        "duration_ratio_p99": None,
        "invalid": [f"error: {error}"],
        "direct": empty,
        "target": empty,
    }
    return run


def _context(phase: dict[str, Any]) -> dict[str, Any]:
    return {
        "cpu": phase["cpu"],
        "memory": phase["memory"],
        "finishes": phase["finishes"],
        "loop_lag_p99_ms": [g["loop_lag_p99_ms"] for g in phase["generators"]],
        "connect_failures": phase["connect_failures"],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the valid runs; none at all if every run was INVALID."""
    valid = [r for r in runs if not r["invalid"]]
    summary: dict[str, Any] = {"valid_runs": len(valid), "runs": len(runs)}
    keys = [name for name, _ in ADDED] + ["duration_ratio_p99"]
    for key in keys:
        summary[key] = median(r[key] for r in valid)
    for role in ("direct", "target"):
        for key in ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms"):
            summary[f"{role}_{key}"] = median(r[role][key] for r in valid)
        summary[f"{role}_streams"] = sum(r[role]["streams"] for r in runs)
        # (the medians above use valid runs only; counts and CPU cover them all)
        summary[f"{role}_complete"] = sum(r[role]["complete"] for r in runs)
        summary[f"{role}_generator_cpu_max"] = max(
            (c or 0 for r in runs for c in r[role]["cpu"]["generators"]), default=None
        )
    summary["target_server_cpu"] = median(
        r["target"]["cpu"].get("server") for r in runs
    )
    summary["upstream_cpu_max"] = max(
        (
            r[role]["cpu"].get("upstream", 0)
            for r in runs
            for role in ("direct", "target")
        ),
        default=None,
    )
    return summary


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def print_figures(result: dict[str, Any]) -> None:
    target = result["target"]
    for mode in ("sustained", "burst"):
        s = result[mode]["summary"]
        if not s["valid_runs"]:
            print(f"{target}.{mode}: INVALID (no valid run of {s['runs']})")
            continue
        for key in [name for name, _ in ADDED] + ["duration_ratio_p99"]:
            print(f"{target}.{mode}.{key}: {s[key]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    args = parser.parse_args()
    unwind_on_signals()
    config = QUICK_LATENCY if args.quick else LatencyConfig()
    upstream = Upstream(config.ttft, config.tps, config.tokens)
    try:
        for target in args.targets.split(","):
            print_figures(measure_target(target, upstream, config))
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
