"""What the scenarios share: a measured phase, its figures, validity and verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from .loadgen import Generators, Job, merge
from .procstat import CpuMeter, median, percentile, status_kb

# A process using this much of a core over the window was saturated.
SATURATED_CORES = 0.9
# Event-loop lag of a generator above this (p99) blurs its timestamps too much.
MAX_LOOP_LAG_MS = 25.0
# Other work on the machine (other users' tests, a browser…) above this many cores
# competes with the processes measured: the figures would be of a smaller machine.
MAX_OTHER_CORES = 0.35

# Prompts. Upstream directives set the test server's pacing per request; the demo
# model's answer to DEMO_PROMPT is long enough for every max_tokens used here.
DEMO_PROMPT = (
    "Explain step by step how to build a table of python code examples for "
    "streaming relays"
)


def upstream_prompt(ttft: float, tps: float, tokens: int) -> str:
    return f"Benchmark stream [[ttft:{ttft}]] [[tps:{tps}]] [[tokens:{tokens}]]"


def expected_text(source: str, prompt: str, tokens: int) -> str:
    """The full answer a client must receive, per source.

    ``upstream``: the test server's reply; ``demo``: the relay's demo model;
    ``words``: the peers' paced source.
    """
    messages = [{"role": "user", "content": prompt}]
    if source == "upstream":
        from tests.openai_server import build_reply

        return "".join(build_reply(messages, tokens))
    if source == "demo":
        from app.providers.demo import compose, split_tokens

        pieces = split_tokens(compose(messages))
        assert len(pieces) >= tokens, f"the demo answer has only {len(pieces)} tokens"
        return "".join(pieces[:tokens])
    return "".join(f"w{i} " for i in range(tokens))


@dataclass
class Watched:
    """Processes whose CPU is read over a phase's window."""

    server: int | None = None
    upstream: int | None = None


def wait_quiet(watched: Watched, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until other work on the machine is below
    MAX_OTHER_CORES; return the seconds waited. Other users' test runs share it."""
    started = time.monotonic()
    pids = {k: v for k, v in vars(watched).items() if v}
    while True:
        meter = CpuMeter(pids)
        meter.start()
        time.sleep(1.0)
        cpu = meter.stop()
        other = cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine")
        waited = time.monotonic() - started
        if other < MAX_OTHER_CORES or waited >= max_wait:
            return round(waited, 1)


def run_phase(
    job: Job, processes: int, watched: Watched, parts: int = 1, quiet_wait: float = 0
) -> dict[str, Any]:
    """Run one phase in ``processes`` generator processes; pool what they report.

    ``parts`` splits a sustained window into that many consecutive sub-windows (by
    stream start), each summarised on its own as a repeated run. With
    ``quiet_wait``, first wait up to that long for other work on the machine to end.
    """
    waited = wait_quiet(watched, quiet_wait) if quiet_wait else 0.0
    generators = Generators(replace(job, parts=parts), processes)
    try:
        ready = generators.wait_ready()
        pids = {}
        if watched.server:
            pids["server"] = watched.server
        if watched.upstream:
            pids["upstream"] = watched.upstream
        meter = CpuMeter(pids)
        go = generators.go()
        if job.mode == "sustained":
            _sleep_until(go + job.warmup)
            meter.start()
            _sleep_until(go + job.duration)
            cpu = meter.stop()
            memory = _memory(watched.server)
            results = generators.results(timeout=job.stream_timeout + 60)
        else:
            _sleep_until(go)
            meter.start()
            results = generators.results(timeout=job.stream_timeout + 60)
            cpu = meter.stop()
            memory = _memory(watched.server)
    finally:
        generators.close()
    phase = merge(results)
    phase["ready"] = ready
    phase["waited_for_quiet_s"] = waited
    phase["cpu"] = cpu
    phase["cpu"]["generators"] = [g["cpu_cores"] for g in phase["generators"]]
    known = cpu.get("server", 0) + cpu.get("upstream", 0)
    known += sum(c or 0 for c in cpu["generators"])
    phase["cpu"]["other"] = round(max(cpu["machine"] - known, 0.0), 3)
    phase["memory"] = memory
    phase["invalid"] = invalid_reasons(phase)
    return phase


def invalid_reasons(phase: dict[str, Any]) -> list[str]:
    """Why a phase's figures cannot be trusted; empty when they can."""
    reasons = []
    for index, generator in enumerate(phase["generators"]):
        if (generator["cpu_cores"] or 0) >= SATURATED_CORES:
            reasons.append(
                f"generator {index} saturated ({generator['cpu_cores']:.2f} cores)"
            )
        lag = generator["loop_lag_p99_ms"] or 0
        if lag > MAX_LOOP_LAG_MS:
            reasons.append(f"generator {index} loop lag p99 {lag:.0f} ms")
    other = phase["cpu"]["other"]
    if other >= MAX_OTHER_CORES:
        reasons.append(f"other work on the machine ({other:.2f} cores)")
    upstream = phase["cpu"].get("upstream")
    if upstream is not None and upstream >= SATURATED_CORES:
        reasons.append(f"upstream saturated ({upstream:.2f} cores)")
    return reasons


def figures(phase: dict[str, Any]) -> dict[str, Any]:
    """The percentiles of one pooled phase (or one part of it), in ms."""
    expected = phase["tokens_expected"]
    return {
        "streams": phase["streams"],
        "complete": phase["complete"],
        "delivered_fraction": round(phase["tokens_delivered"] / expected, 5)
        if expected
        else None,
        "events_per_stream": round(phase["events"] / phase["streams"], 2)
        if phase["streams"]
        else None,
        "ttft_p50_ms": _ms(percentile(phase["ttft"], 50)),
        "ttft_p99_ms": _ms(percentile(phase["ttft"], 99)),
        "gap_p50_ms": _ms(percentile(phase["gaps"], 50)),
        "gap_p99_ms": _ms(percentile(phase["gaps"], 99)),
        "duration_p50_ms": _ms(percentile(phase["durations"], 50)),
        "duration_p99_ms": _ms(percentile(phase["durations"], 99)),
        "lateness_p50_ms": _ms(percentile(phase["lateness"], 50)),
        "lateness_p99_ms": _ms(percentile(phase["lateness"], 99)),
    }


# The figures a capacity level reports as the median over the phase's parts.
_LEVEL_FIGURES = (
    "delivered_fraction",
    "lateness_p50_ms",
    "lateness_p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "events_per_stream",
)


def level_figures(phase: dict[str, Any]) -> dict[str, Any]:
    """A capacity level's figures: medians over its parts, the pooled figures, and
    the parts themselves."""
    parts = [figures(part) for part in phase["parts"]]
    level: dict[str, Any] = {
        key: median(p[key] for p in parts) for key in _LEVEL_FIGURES
    }
    level["pooled"] = figures(phase)
    level["parts"] = parts
    return level


# The capacity pass criterion (README "Definitions": Capacity).
MAX_LATENESS_MS = 100.0
MIN_DELIVERED = 0.99
# A level this far off is failed even in an INVALID run: no measurement error of
# the size that made it INVALID (tens of ms of lag) explains it.
GROSS_LATENESS_MS = 1000.0
GROSS_DELIVERED = 0.9


def judge(level: dict[str, Any], connect_failures: int, streams: int) -> None:
    """Set a level's ``passes`` and ``gross_failure`` from its medians."""
    delivered = level["delivered_fraction"] or 0
    lateness = level["lateness_p99_ms"]
    level["gross_failure"] = (
        connect_failures > streams * 0.01
        or delivered < GROSS_DELIVERED
        or (lateness or 0) > GROSS_LATENESS_MS
    )
    level["passes"] = (
        connect_failures == 0
        and delivered >= MIN_DELIVERED
        and lateness is not None
        and lateness <= MAX_LATENESS_MS
    )


def verdict(level: dict[str, Any]) -> str:
    """A level's verdict: ``pass``, ``FAIL``, ``FAIL by far (in an INVALID run: …)``,
    ``INVALID: …``, ``FAIL: <error>`` (it could not run) or ``skipped``."""
    if "skipped" in level:
        return "skipped"
    if "error" in level:
        return "FAIL: " + level["error"]
    if level["invalid"]:
        reasons = "; ".join(level["invalid"])
        if level["gross_failure"]:
            return f"FAIL by far (in an INVALID run: {reasons})"
        return "INVALID: " + reasons
    return "pass" if level["passes"] else "FAIL"


def cpu_us_per(cores: float | None, per_second: float | None) -> float | None:
    """CPU µs per thing (token, chunk): cores used over the window × 1e6 / things
    per second in it."""
    if cores is None or not per_second:
        return None
    return round(cores * 1e6 / per_second, 1)


def strip_samples(phase: dict[str, Any], keep: int = 0) -> dict[str, Any]:
    """A phase without its raw sample lists (kept short for the chart if asked)."""
    out = {k: v for k, v in phase.items() if k not in _SAMPLES and k != "parts"}
    if keep:
        for key in _SAMPLES:
            values = sorted(phase[key])
            step = max(1, len(values) // keep)
            out[f"{key}_sample_ms"] = [round(v * 1000, 2) for v in values[::step]]
    return out


_SAMPLES = ("ttft", "gaps", "lateness", "durations")


def _memory(pid: int | None) -> dict[str, Any]:
    if not pid:
        return {}
    try:
        return {
            "rss_mb": round(status_kb(pid, "VmRSS") / 1024, 1),
            "peak_rss_mb": round(status_kb(pid, "VmHWM") / 1024, 1),
            "threads": status_kb(pid, "Threads"),
        }
    except (OSError, TypeError):
        return {}


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)
