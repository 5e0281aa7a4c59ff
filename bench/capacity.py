"""Capacity: how many concurrent streams one server process carries, and its CPU per
token.

Concurrent streams are ramped (100, 250, 500, 1000, 2000) at 50 tokens/s each, in
two series per target:

- ``upstream`` (the headline): every stream comes from ``tests/openai_server/``
  over real HTTP, read by the target's own upstream client (the relay's openai
  provider, the peers' ``openai`` package), as it runs in production;
- ``demo``: "demo model, paced inside the server": the source is paced inside the
  target (the relay's demo model, the peers' word generator), so no upstream is
  involved.

Next to them, once per run, the ``direct`` series reads the same load straight
from the test server with no relay at all (``AsyncOpenAI`` at 100 streams, a raw
HTTP reader at every level): what the upstream and the load generator themselves
sustain. Each level runs on freshly started processes (server and test server),
keeps its streams in flight (each finished stream replaced at once), discards a
warm-up and splits the rest of the window into consecutive parts, whose figures'
median is reported.

A token is on time when it arrives no later than 100 ms after its place on the
stream's schedule: token k of a stream is due at ``anchor + k / 50 s``, the anchor
being the earliest such schedule any of its tokens kept
(``min_k(arrival_k - k/50)``). Tokens are counted in the text (whitespace-led words),
not in events, so coalesced chunks are measured the same. Capacity is the most
streams at which ≥ 99 % of the tokens arrive within the stream's time limit and the
p99 lateness is ≤ 100 ms, in a valid run.

Also: the server's CPU and RSS (its worker's /proc) and its CPU µs per token
delivered (cores × 1e6 / tokens per second), the test server's CPU, and the server's
RSS per idle connection (RSS delta over N idle Socket.IO connections / N).

    python -m bench.capacity [--quick] [--targets relay-gevent,relay-gevent-sse]
        [--levels 100,250] [--series upstream,demo] [--no-direct]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from .common import (
    DEMO_PROMPT,
    Watched,
    cpu_us_per,
    expected_text,
    judge,
    level_figures,
    run_phase,
    upstream_prompt,
    verdict,
)
from .loadgen import Generators, Job
from .procstat import status_kb
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

SERIES = ("upstream", "demo")
LABELS = {
    "upstream": "through the test server",
    "demo": "demo model, paced inside the server",
    "direct": "no relay, straight from the test server",
}
# The no-relay readers: the official client, and the lean one for high levels.
DIRECT_CLIENTS = {"openai": "AsyncOpenAI", "openai-http": "raw HTTP"}


@dataclass
class CapacityConfig:
    levels: tuple[int, ...] = (100, 250, 500, 1000, 2000)
    rate: float = 50.0
    ttft: float = 0.2
    tokens: int = 150
    duration: float = 12.0
    warmup: float = 4.5
    parts: int = 3
    series: tuple[str, ...] = SERIES
    # The no-relay series: AsyncOpenAI at this many streams (0: not), then the raw
    # HTTP reader at each of ``direct_levels`` (None: the ramp's levels; (): none).
    direct_openai_level: int = 100
    direct_levels: tuple[int, ...] | None = None
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
    direct_openai_level=20,
    idle_connections=100,
    quiet_wait=0.0,
)


def measure_target(target: str, config: CapacityConfig, log=print) -> dict[str, Any]:
    """A target's series (through the test server first) and its idle memory."""
    out: dict[str, Any] = {"target": target}
    for series in config.series:
        out[series] = run_series(target, series, config, log)
    try:
        out["idle"] = idle_rss(target, config)
    except Exception as exc:  # noqa: BLE001  (reported; the run goes on)
        out["idle"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:300]}
    return out


def run_series(
    target: str, series: str, config: CapacityConfig, log=print
) -> dict[str, Any]:
    """One ramp: each level on fresh processes, until one level after a failure."""
    levels: list[dict[str, Any]] = []
    failures = 0
    for streams in config.levels:
        if failures > config.levels_after_failure:
            levels.append(
                {"streams": streams, "series": series, "skipped": "lower levels failed"}
            )
            continue
        level = _guarded(run_level, target, series, streams, config)
        levels.append(level)
        _log_level(log, f"{target} {series}", level)
        if not level["passes"] and (not level["invalid"] or level["gross_failure"]):
            failures += 1
    best, note = capacity_of(levels)
    return {
        "series": series,
        "label": LABELS[series],
        "levels": levels,
        "capacity": best,
        "capacity_note": note,
        "invalid_levels": [lv["streams"] for lv in levels if lv.get("invalid")],
    }


def measure_direct(config: CapacityConfig, log=print) -> dict[str, Any]:
    """The no-relay series: the load read straight from a fresh test server."""
    runs = []
    if config.direct_openai_level:
        runs.append(("openai", config.direct_openai_level))
    direct = config.levels if config.direct_levels is None else config.direct_levels
    runs += [("openai-http", streams) for streams in direct]
    levels = []
    for client, streams in runs:
        level = _guarded(run_direct_level, client, "direct", streams, config)
        level["client"] = DIRECT_CLIENTS[client]
        levels.append(level)
        _log_level(log, f"no relay ({DIRECT_CLIENTS[client]})", level)
    return {"series": "direct", "label": LABELS["direct"], "levels": levels}


def all_levels(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A target's levels (or the direct series' levels), each with its ``series``."""
    if result.get("series") == "direct":
        return list(result["levels"])
    ramps = [result[series] for series in SERIES if series in result]
    return [level for ramp in ramps for level in ramp["levels"]]


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


def _guarded(run, name: str, series: str, streams: int, config) -> dict[str, Any]:
    """A level, or the record of its failing to run (the benchmark goes on)."""
    try:
        return run(name, series, streams, config)
    except Exception as exc:  # noqa: BLE001
        return {
            "streams": streams,
            "series": series,
            "error": f"{type(exc).__name__}: {exc}"[:500],
            "invalid": [],
            "passes": False,
            "gross_failure": True,
            "delivered_fraction": None,
            "lateness_p50_ms": None,
            "lateness_p99_ms": None,
            "server_cpu_cores": None,
            "cpu_us_per_token": None,
            "upstream_cpu_cores": None,
            "generator_cpu_cores": [],
            "server_memory": {},
        }


def run_level(
    target: str, series: str, streams: int, config: CapacityConfig
) -> dict[str, Any]:
    base, _ = parse_target(target)
    kind = TARGETS[base]["kind"]
    upstream = None
    if series == "upstream":
        source = "upstream"
        prompt = upstream_prompt(config.ttft, config.rate, config.tokens)
        upstream = Upstream(config.ttft, config.rate, config.tokens)
    else:
        source = "demo" if base.startswith("relay") else "words"
        prompt = DEMO_PROMPT
    try:
        server = start_target(
            target,
            upstream=upstream,
            demo=None if upstream else (config.ttft, config.rate),
            connections=streams,
        )
        try:
            idle_rss_mb = status_kb(server.worker, "VmRSS") / 1024
            url = client_url(target, server)
            job = sustained_job(config, kind, url, streams, source, prompt)
            watched = Watched(
                server=server.worker, upstream=upstream.worker if upstream else None
            )
            phase = run_phase(
                job, config.processes, watched, config.parts, config.quiet_wait
            )
        finally:
            server.stop()
    finally:
        if upstream is not None:
            upstream.stop()
    level = _level(streams, series, source, phase, config)
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
    client: str, series: str, streams: int, config: CapacityConfig
) -> dict[str, Any]:
    """The capacity load with no relay: ``client`` ("openai": ``AsyncOpenAI``;
    "openai-http": the raw reader) reading a fresh test server straight."""
    prompt = upstream_prompt(config.ttft, config.rate, config.tokens)
    upstream = Upstream(config.ttft, config.rate, config.tokens)
    try:
        job = sustained_job(
            config,
            client,
            upstream.base_url,
            streams,
            "upstream",
            prompt,
            api_key=UPSTREAM_KEY,
            model=UPSTREAM_MODEL,
        )
        phase = run_phase(
            job,
            config.processes,
            Watched(upstream=upstream.worker),
            config.parts,
            config.quiet_wait,
        )
    finally:
        upstream.stop()
    return _level(streams, series, "upstream", phase, config)


def _level(
    streams: int,
    series: str,
    source: str,
    phase: dict[str, Any],
    config: CapacityConfig,
) -> dict[str, Any]:
    level: dict[str, Any] = {
        "streams": streams,
        "series": series,
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
    level["deflate_connections"] = phase["deflate_connections"]
    level["server_cpu_cores"] = phase["cpu"].get("server")
    level["cpu_us_per_token"] = cpu_us_per(
        level["server_cpu_cores"], level["tokens_per_s_delivered"]
    )
    level["server_memory"] = phase["memory"]
    level["upstream_cpu_cores"] = phase["cpu"].get("upstream")
    level["upstream_cpu_us_per_token"] = cpu_us_per(
        level["upstream_cpu_cores"], level["tokens_per_s_delivered"]
    )
    level["generator_cpu_cores"] = phase["cpu"]["generators"]
    level["generator_loop_lag_p99_ms"] = [
        g["loop_lag_p99_ms"] for g in phase["generators"]
    ]
    level["other_cpu_cores"] = phase["cpu"]["other"]
    level["machine_cpu_cores"] = phase["cpu"]["machine"]
    level["waited_for_quiet_s"] = phase["waited_for_quiet_s"]
    level["invalid"] = phase["invalid"]
    level["measured_warmup_streams"] = phase["measured_warmup_streams"]
    judge(level, phase["connect_failures"], streams)
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


def _log_level(log, name: str, level: dict[str, Any]) -> None:
    log(
        f"  capacity {name} {level['streams']} streams: "
        f"delivered {level.get('delivered_fraction')}, "
        f"lateness p99 {level.get('lateness_p99_ms')} ms, "
        f"server cpu {level.get('server_cpu_cores')} "
        f"({level.get('cpu_us_per_token')} µs/token), "
        f"upstream cpu {level.get('upstream_cpu_cores')}, "
        f"generators {level.get('generator_cpu_cores')} -> {verdict(level)}"
    )


# The figures printed per level, and per series which of them are judged.
_PRINTED = (
    "delivered_fraction",
    "lateness_p99_ms",
    "server_cpu_cores",
    "cpu_us_per_token",
    "upstream_cpu_cores",
)
_JUDGED = ("delivered_fraction", "lateness_p99_ms")


def print_figures(result: dict[str, Any]) -> None:
    """``name: figure`` lines: ``<target>.capacity_streams`` (through the test
    server, the headline), ``<target>.demo.capacity_streams``, and per level
    ``<target>.<series>.<streams>.<figure>``."""
    target = result["target"]
    for series in SERIES:
        if series not in result:
            continue
        ramp = result[series]
        note = f" ({ramp['capacity_note']})" if ramp["capacity_note"] else ""
        head = target if series == "upstream" else f"{target}.{series}"
        print(f"{head}.capacity_streams: {ramp['capacity']}{note}")
        for level in ramp["levels"]:
            _print_level(f"{target}.{series}.{level['streams']}", level, _PRINTED)
            if "rss_mb" in level.get("server_memory", {}):
                name = f"{target}.{series}.{level['streams']}.server_rss_mb"
                print(f"{name}: {level['server_memory']['rss_mb']}")
    idle = result["idle"]
    if "rss_per_connection_kb" in idle:
        print(f"{target}.rss_per_idle_connection_kb: {idle['rss_per_connection_kb']}")


def print_direct(direct: dict[str, Any]) -> None:
    """``direct.<client>.<streams>.<figure>`` lines for the no-relay series."""
    for level in direct["levels"]:
        client = "asyncopenai" if level["client"] == "AsyncOpenAI" else "http"
        _print_level(
            f"direct.{client}.{level['streams']}",
            level,
            (
                "delivered_fraction",
                "lateness_p99_ms",
                "upstream_cpu_cores",
                "upstream_cpu_us_per_token",
            ),
        )


def _print_level(name: str, level: dict[str, Any], keys: tuple[str, ...]) -> None:
    if "skipped" not in level and "error" not in level:
        state = "INVALID " if level["invalid"] else ""
        for key in keys:
            mark = state if key in _JUDGED else ""
            print(f"{name}.{key}: {mark}{level[key]}")
    print(f"{name}.verdict: {verdict(level)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--levels", help="comma-separated stream counts")
    parser.add_argument("--series", help=f"comma-separated, of {', '.join(SERIES)}")
    parser.add_argument(
        "--no-direct", action="store_true", help="skip the no-relay series"
    )
    args = parser.parse_args()
    unwind_on_signals()
    config = QUICK_CAPACITY if args.quick else CapacityConfig()
    if args.levels:
        config.levels = tuple(int(n) for n in args.levels.split(","))
    if args.series:
        config.series = tuple(args.series.split(","))
    if not args.no_direct:
        print_direct(measure_direct(config))
    for target in args.targets.split(","):
        print_figures(measure_target(target, config))


if __name__ == "__main__":
    main()
