"""Capacity: how many concurrent streams one server process carries.

Concurrent streams are ramped (100, 250, 500, 1000, 2000), each at 50 tokens/s from
a source paced server-side (the relay's demo model, the peers' word generator), so
the upstream is not the bottleneck; one more level goes through the test server.
Each level runs on a freshly started server, keeps its streams in flight (each
finished stream replaced at once), discards a warm-up and splits the rest of the
window into consecutive parts, whose figures' median is reported.

A token is on time when it arrives no later than 100 ms after its place on the
stream's schedule: token k of a stream is due at ``anchor + k / 50 s``, the anchor
being the earliest such schedule any of its tokens kept
(``min_k(arrival_k - k/50)``). Tokens are counted in the text (whitespace-led words),
not in events, so coalesced chunks are measured the same. Capacity is the most
streams at which ≥ 99 % of the tokens arrive within the stream's time limit and the
p99 lateness is ≤ 100 ms, in a valid run.

Also: the server's CPU and RSS (its gunicorn worker's /proc), and its RSS per idle
connection (RSS delta over N idle Socket.IO connections / N).

    python -m bench.capacity [--quick] [--targets relay-eventlet,naive-sio]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from .common import (
    DEMO_PROMPT,
    Watched,
    expected_text,
    level_figures,
    run_phase,
    upstream_prompt,
)
from .loadgen import Generators, Job
from .procstat import status_kb
from .servers import (
    TARGETS,
    UPSTREAM_KEY,
    Upstream,
    parse_target,
    start_target,
    unwind_on_signals,
)

MAX_LATENESS_MS = 100.0
MIN_DELIVERED = 0.99
# A level this far off is failed even in an INVALID run: no measurement error of
# the size that made it INVALID (tens of ms of lag) explains it.
GROSS_LATENESS_MS = 1000.0
GROSS_DELIVERED = 0.9


@dataclass
class CapacityConfig:
    levels: tuple[int, ...] = (100, 250, 500, 1000, 2000)
    rate: float = 50.0
    ttft: float = 0.2
    tokens: int = 150
    duration: float = 12.0
    warmup: float = 4.5
    parts: int = 3
    upstream_level: int = 100  # the test-server variant's streams; 0: none
    idle_connections: int = 1000
    processes: int = 2
    # Levels still run after the first failing one: a ramp past the knee shows
    # the collapse without spending minutes on it.
    levels_after_failure: int = 1
    quiet_wait: float = 30.0

    @property
    def stream_seconds(self) -> float:
        return self.ttft + self.tokens / self.rate


QUICK_CAPACITY = CapacityConfig(
    levels=(50,),
    tokens=50,
    duration=3.0,
    warmup=1.2,
    parts=2,
    upstream_level=20,
    idle_connections=100,
    quiet_wait=0.0,
)


def measure_target(
    target: str, upstream: Upstream | None, config: CapacityConfig, log=print
) -> dict[str, Any]:
    levels: list[dict[str, Any]] = []
    failures = 0
    for streams in config.levels:
        if failures > config.levels_after_failure:
            levels.append({"streams": streams, "skipped": "lower levels failed"})
            continue
        level = _guarded(run_level, target, streams, config, None)
        levels.append(level)
        _log_level(log, target, level)
        if not level["passes"] and (not level["invalid"] or level["gross_failure"]):
            failures += 1
    out: dict[str, Any] = {"target": target, "levels": levels}
    out["capacity"], out["capacity_note"] = capacity_of(levels)
    out["invalid_levels"] = [lv["streams"] for lv in levels if lv.get("invalid")]
    if upstream is not None and config.upstream_level:
        level = _guarded(run_level, target, config.upstream_level, config, upstream)
        _log_level(log, target + " via upstream", level)
        out["upstream_variant"] = level
        level = _guarded(
            run_direct_level, target, config.upstream_level, config, upstream
        )
        _log_level(log, "  direct to the upstream", level)
        out["upstream_direct"] = level
    try:
        out["idle"] = idle_rss(target, config)
    except Exception as exc:  # noqa: BLE001  (reported; the run goes on)
        out["idle"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:300]}
    return out


def all_levels(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A target's ramp levels, then its upstream variant and the no-relay level beside
    it, each of those two tagged ``via`` ("upstream", "direct")."""
    levels = list(result["levels"])
    for key, via in (("upstream_variant", "upstream"), ("upstream_direct", "direct")):
        if key in result:
            levels.append({**result[key], "via": via})
    return levels


def capacity_of(levels: list[dict[str, Any]]) -> tuple[int, str]:
    """The highest valid passing level below the first failure, and a caveat."""
    best, unknown = 0, []
    for level in levels:
        if "skipped" in level:
            break
        if level["passes"] and not level["invalid"]:
            best = level["streams"]
        elif level["invalid"] and not level["gross_failure"]:
            unknown.append(level["streams"])
        else:
            break
    above = [n for n in unknown if n > best]
    note = f"levels {above} were INVALID: it may be higher" if above else ""
    return best, note


def _guarded(run, target: str, streams: int, config, upstream) -> dict[str, Any]:
    """A level, or the record of its failing to run (the benchmark goes on)."""
    try:
        return run(target, streams, config, upstream=upstream)
    except Exception as exc:  # noqa: BLE001
        return {
            "streams": streams,
            "error": f"{type(exc).__name__}: {exc}"[:500],
            "invalid": [],
            "passes": False,
            "gross_failure": True,
            "delivered_fraction": None,
            "lateness_p99_ms": None,
            "server_cpu_cores": None,
            "generator_cpu_cores": [],
            "server_memory": {},
        }


def run_level(
    target: str, streams: int, config: CapacityConfig, upstream: Upstream | None
) -> dict[str, Any]:
    base, _ = parse_target(target)
    kind = TARGETS[base]["kind"]
    if upstream is not None:
        source = "upstream"
        prompt = upstream_prompt(config.ttft, config.rate, config.tokens)
    else:
        source = "demo" if base.startswith("relay") else "words"
        prompt = DEMO_PROMPT
    server = start_target(
        target,
        upstream=upstream,
        demo=None if upstream else (config.ttft, config.rate),
        connections=streams,
    )
    try:
        idle_rss_mb = status_kb(server.worker, "VmRSS") / 1024
        job = sustained_job(config, kind, server.url, streams, source, prompt)
        watched = Watched(
            server=server.worker, upstream=upstream.worker if upstream else None
        )
        phase = run_phase(
            job, config.processes, watched, config.parts, config.quiet_wait
        )
    finally:
        server.stop()
    level = _level(streams, source, phase, config)
    level["server_idle_rss_mb"] = round(idle_rss_mb, 1)
    return level


def sustained_job(
    config: CapacityConfig,
    kind: str,
    url: str,
    streams: int,
    source: str,
    prompt: str,
    **fields: Any,
) -> Job:
    """The capacity scenario's load: ``streams`` slots running ``source``'s streams
    back to back at the scenario's rate, the first starts spread over one stream."""
    return Job(
        kind=kind,
        url=url,
        slots=streams,
        mode="sustained",
        prompt=prompt,
        max_tokens=config.tokens,
        expected_text=expected_text(source, prompt, config.tokens),
        rate=config.rate,
        duration=config.duration,
        warmup=config.warmup,
        stagger=config.stream_seconds,
        stream_timeout=config.stream_seconds + 10,
        **fields,
    )


def run_direct_level(
    target: str, streams: int, config: CapacityConfig, upstream: Upstream
) -> dict[str, Any]:
    """The upstream variant's load with no relay: ``AsyncOpenAI`` clients reading the
    test server straight, run next to ``target``'s variant so that what the upstream
    itself sustains is measured in the same run."""
    prompt = upstream_prompt(config.ttft, config.rate, config.tokens)
    job = sustained_job(
        config,
        "openai",
        upstream.base_url,
        streams,
        "upstream",
        prompt,
        api_key=UPSTREAM_KEY,
    )
    phase = run_phase(
        job,
        config.processes,
        Watched(upstream=upstream.worker),
        config.parts,
        config.quiet_wait,
    )
    return _level(streams, "upstream", phase, config)


def _level(
    streams: int, source: str, phase: dict[str, Any], config: CapacityConfig
) -> dict[str, Any]:
    level: dict[str, Any] = {
        "streams": streams,
        "source": source,
        **level_figures(phase),
    }
    level["streams_measured"] = level["pooled"]["streams"]
    level["streams_complete"] = level["pooled"]["complete"]
    # Each stream is idle for its TTFT before its tokens flow at the rate.
    level["tokens_per_s_offered"] = round(
        streams * config.tokens / config.stream_seconds, 1
    )
    level["tokens_per_s_delivered"] = phase["window_tokens_per_s"]
    level["finishes"] = phase["finishes"]
    level["connect_failures"] = phase["connect_failures"]
    level["connect_errors"] = phase["connect_errors"]
    level["server_cpu_cores"] = phase["cpu"].get("server")
    level["server_memory"] = phase["memory"]
    level["upstream_cpu_cores"] = phase["cpu"].get("upstream")
    level["generator_cpu_cores"] = phase["cpu"]["generators"]
    level["generator_loop_lag_p99_ms"] = [
        g["loop_lag_p99_ms"] for g in phase["generators"]
    ]
    level["other_cpu_cores"] = phase["cpu"]["other"]
    level["machine_cpu_cores"] = phase["cpu"]["machine"]
    level["waited_for_quiet_s"] = phase["waited_for_quiet_s"]
    level["invalid"] = phase["invalid"]
    level["measured_warmup_streams"] = phase["measured_warmup_streams"]
    level["gross_failure"] = (
        phase["connect_failures"] > streams * 0.01
        or (level["delivered_fraction"] or 0) < GROSS_DELIVERED
        or (level["lateness_p99_ms"] or 0) > GROSS_LATENESS_MS
    )
    level["passes"] = (
        phase["connect_failures"] == 0
        and (level["delivered_fraction"] or 0) >= MIN_DELIVERED
        and level["lateness_p99_ms"] is not None
        and level["lateness_p99_ms"] <= MAX_LATENESS_MS
    )
    return level


def idle_rss(target: str, config: CapacityConfig) -> dict[str, Any]:
    """RSS of the server per idle Socket.IO connection (connected, no request)."""
    base, _ = parse_target(target)
    if TARGETS[base]["kind"] != "sio":
        return {"skipped": "no persistent connection: SSE opens one per request"}
    count = config.idle_connections
    server = start_target(
        target, upstream=None, demo=(config.ttft, config.rate), connections=count
    )
    generators = None
    try:
        time.sleep(1)
        before = status_kb(server.worker, "VmRSS")
        job = Job(
            kind="sio",
            url=server.url,
            slots=count,
            mode="idle",
            prompt="",
            max_tokens=1,
            expected_text="",
            rate=0,
        )
        generators = Generators(job, config.processes)
        ready = generators.wait_ready()
        time.sleep(2)
        after = status_kb(server.worker, "VmRSS")
        generators.go(0)
        generators.results(timeout=60)
    finally:
        if generators is not None:
            generators.close()
        server.stop()
    return {
        "connections": ready["connected"],
        "connect_failures": ready["failures"],
        "rss_before_mb": round(before / 1024, 1),
        "rss_after_mb": round(after / 1024, 1),
        "rss_per_connection_kb": round(
            (after - before) / max(ready["connected"], 1), 1
        ),
    }


def verdict(level: dict[str, Any]) -> str:
    if "error" in level:
        return "FAIL: " + level["error"]
    if level["invalid"]:
        reasons = "; ".join(level["invalid"])
        if level["gross_failure"]:
            return f"FAIL by far (in an INVALID run: {reasons})"
        return "INVALID: " + reasons
    return "pass" if level["passes"] else "FAIL"


def _log_level(log, target: str, level: dict[str, Any]) -> None:
    log(
        f"  capacity {target} {level['streams']} streams: "
        f"delivered {level['delivered_fraction']}, "
        f"lateness p99 {level['lateness_p99_ms']} ms, "
        f"server cpu {level['server_cpu_cores']}, "
        f"upstream cpu {level.get('upstream_cpu_cores')}, "
        f"generators {level['generator_cpu_cores']} -> {verdict(level)}"
    )


def print_figures(result: dict[str, Any]) -> None:
    target = result["target"]
    note = f" ({result['capacity_note']})" if result["capacity_note"] else ""
    print(f"{target}.capacity_streams: {result['capacity']}{note}")
    for level in result["levels"]:
        if "skipped" in level or "error" in level:
            continue
        name = f"{target}.{level['streams']}"
        state = "INVALID " if level["invalid"] else ""
        print(f"{name}.delivered_fraction: {state}{level['delivered_fraction']}")
        print(f"{name}.lateness_p99_ms: {state}{level['lateness_p99_ms']}")
        print(f"{name}.server_cpu_cores: {level['server_cpu_cores']}")
        print(f"{name}.server_rss_mb: {level['server_memory'].get('rss_mb')}")
    idle = result["idle"]
    if "rss_per_connection_kb" in idle:
        print(f"{target}.rss_per_idle_connection_kb: {idle['rss_per_connection_kb']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--targets", default="relay-eventlet,relay-threading")
    parser.add_argument("--levels", help="comma-separated stream counts")
    args = parser.parse_args()
    unwind_on_signals()
    config = QUICK_CAPACITY if args.quick else CapacityConfig()
    if args.levels:
        config.levels = tuple(int(n) for n in args.levels.split(","))
    upstream = Upstream(config.ttft, config.rate, config.tokens)
    try:
        for target in args.targets.split(","):
            print_figures(measure_target(target, upstream, config))
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
