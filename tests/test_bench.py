"""The benchmark's quick mode runs end to end and reports what it should.

No timing is asserted: the figures depend on the machine (and quick mode's levels
are often INVALID on a busy one). What is pinned is that every target ran both
capacity series and the no-relay one, that every stream measured arrived whole,
that each level's CPU per token is a positive figure computed as documented, that
every verdict is one bench/README.md defines, and what is printed matches the JSON.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.capacity import capacity_of
from bench.common import verdict
from bench.latency import direct_client
from bench.run import QUICK_CAPACITY_TARGETS, QUICK_LATENCY_TARGETS
from bench.servers import TARGETS, stop

ROOT = Path(__file__).resolve().parent.parent

LATENCY_FIGURES = {
    "added_ttft_p50_ms",
    "added_ttft_p99_ms",
    "added_gap_p50_ms",
    "added_gap_p99_ms",
    "duration_ratio_p99",
    "valid_runs",
}
LEVEL_FIGURES = {
    "streams",
    "series",
    "source",
    "delivered_fraction",
    "lateness_p50_ms",
    "lateness_p99_ms",
    "tokens_per_s_delivered",
    "tokens_per_s_offered",
    "server_cpu_cores",
    "cpu_us_per_token",
    "upstream_cpu_cores",
    "upstream_cpu_us_per_token",
    "server_memory",
    "generator_cpu_cores",
    "generator_loop_lag_p99_ms",
    "deflate_connections",
    "invalid",
    "passes",
    "gross_failure",
}
# The verdicts bench/README.md defines ("Definitions", "INVALID").
VERDICT = re.compile(
    r"pass|FAIL|skipped|INVALID: .+|FAIL by far \(in an INVALID run: .+\)|FAIL: .+"
)
CAPACITY = re.compile(r"\d+( \(levels \[[\d, ]+\] were INVALID: it may be higher\))?")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``python -m bench --quick`` run: its JSON, output folder and figures."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    figures = dict(line.split(": ", 1) for line in lines)
    assert len(figures) == len(lines), "a figure was printed twice"
    return json.loads((out / "latest.json").read_text()), out, figures


def _measured(level):
    return "skipped" not in level and "error" not in level


@pytest.mark.timeout(420)
def test_quick_mode_writes_results_chart_and_table(quick_run):
    results, out, figures = quick_run
    assert set(results) >= {"meta", "latency", "capacity", "direct", "invalid"}
    machine = results["meta"]["machine"]
    assert machine["nproc"] > 0 and machine["cpu_model"] and machine["python"]
    assert machine["packages"]["python-socketio"] != "missing"
    assert (out / "bench.png").stat().st_size > 10_000
    table = (out / "table.md").read_text()
    for target in QUICK_CAPACITY_TARGETS:
        assert f"| {target} | 50 |" in table
    assert "| no relay (AsyncOpenAI) | 20 |" in table
    assert "| no relay (raw HTTP) | 50 |" in table
    assert "demo model, paced inside the server" in table
    assert float(figures["duration_s"]) > 0
    assert int(figures["invalid_runs"]) == len(results["invalid"])


@pytest.mark.timeout(420)
def test_every_latency_stream_arrived_whole(quick_run):
    results, _, _ = quick_run
    assert list(results["latency"]) == QUICK_LATENCY_TARGETS
    for result in results["latency"].values():
        for mode in ("sustained", "burst"):
            assert set(result[mode]["summary"]) >= LATENCY_FIGURES
            assert result[mode]["runs"]
            for run in result[mode]["runs"]:
                for role in ("direct", "target"):
                    figures = run[role]
                    assert figures["streams"] > 0
                    assert figures["complete"] == figures["streams"]
                    assert figures["delivered_fraction"] == 1.0
                    assert figures["ttft_p50_ms"] > 0
                    assert all(c is not None for c in figures["cpu"]["generators"])


@pytest.mark.timeout(420)
def test_every_target_ran_both_capacity_series_whole(quick_run):
    results, _, _ = quick_run
    assert list(results["capacity"]) == QUICK_CAPACITY_TARGETS
    for target, result in results["capacity"].items():
        for series in ("upstream", "demo"):
            (level,) = result[series]["levels"]
            assert _measured(level), (target, series, level)
            assert set(level) >= LEVEL_FIGURES
            assert level["series"] == series
            assert level["streams"] == 50
            assert level["streams_measured"] > 0
            assert level["streams_complete"] == level["streams_measured"]
            assert level["delivered_fraction"] == 1.0
            offered = level["tokens_per_s_offered"]
            assert 0 < level["tokens_per_s_delivered"] < 2 * offered
            assert level["server_cpu_cores"] > 0
            assert level["server_memory"]["rss_mb"] > 0
            assert level["connect_failures"] == 0
        # The test server's CPU is read where there is one, and only there.
        assert result["upstream"]["levels"][0]["source"] == "upstream"
        assert result["upstream"]["levels"][0]["upstream_cpu_cores"] > 0
        assert result["demo"]["levels"][0]["upstream_cpu_cores"] is None
        expected_source = "demo" if target.startswith("relay") else "words"
        assert result["demo"]["levels"][0]["source"] == expected_source


@pytest.mark.timeout(420)
def test_cpu_per_token_is_positive_and_as_defined(quick_run):
    results, _, figures = quick_run
    for target, result in results["capacity"].items():
        for series in ("upstream", "demo"):
            level = result[series]["levels"][0]
            us = level["cpu_us_per_token"]
            assert isinstance(us, float) and us > 0, (target, series, us)
            # server CPU cores × 1e6 / tokens per second delivered in the window
            defined = level["server_cpu_cores"] * 1e6 / level["tokens_per_s_delivered"]
            assert us == pytest.approx(defined, abs=0.1)
            assert float(figures[f"{target}.{series}.50.cpu_us_per_token"]) == us
        level = result["upstream"]["levels"][0]
        assert level["upstream_cpu_us_per_token"] > 0


@pytest.mark.timeout(420)
def test_no_relay_series_reads_the_test_server_with_both_clients(quick_run):
    results, _, figures = quick_run
    levels = results["direct"]["levels"]
    assert [(lv["client"], lv["streams"]) for lv in levels] == [
        ("AsyncOpenAI", 20),
        ("raw HTTP", 50),
    ]
    for level in levels:
        assert _measured(level), level
        assert level["streams_measured"] > 0
        assert level["streams_complete"] == level["streams_measured"]
        assert level["server_cpu_cores"] is None and level["cpu_us_per_token"] is None
        assert level["upstream_cpu_us_per_token"] > 0
    assert float(figures["direct.asyncopenai.20.upstream_cpu_us_per_token"]) > 0
    assert float(figures["direct.http.50.lateness_p99_ms"].split()[-1]) >= 0


@pytest.mark.timeout(420)
def test_verdicts_and_capacities_are_the_documented_ones(quick_run):
    results, _, figures = quick_run
    every = list(results["direct"]["levels"])
    for result in results["capacity"].values():
        every += result["upstream"]["levels"] + result["demo"]["levels"]
    for level in every:
        said = verdict(level)
        assert VERDICT.fullmatch(said), said
        assert (said == "pass") == (level["passes"] and not level["invalid"])
    printed = {k: v for k, v in figures.items() if k.endswith(".verdict")}
    assert len(printed) == len(every)
    for value in printed.values():
        assert VERDICT.fullmatch(value), value
    for target, result in results["capacity"].items():
        for series, name in (("upstream", target), ("demo", f"{target}.demo")):
            said = figures[f"{name}.capacity_streams"]
            assert CAPACITY.fullmatch(said), said
            assert int(said.split()[0]) == result[series]["capacity"]
            assert result[series]["capacity"] in (0, 50)
    for line in results["invalid"]:
        assert line.startswith("capacity ") or line.startswith("latency ")


@pytest.mark.timeout(420)
def test_idle_connections_are_measured_on_socketio_targets(quick_run):
    results, _, figures = quick_run
    for target in ("relay-gevent", "sio-asgi"):
        idle = results["capacity"][target]["idle"]
        assert idle["connections"] == 100 and idle["connect_failures"] == 0
        assert idle["rss_after_mb"] > 0
        assert f"{target}.rss_per_idle_connection_kb" in figures
    for target in ("relay-gevent-sse", "fastapi-sse"):
        assert "skipped" in results["capacity"][target]["idle"]


@pytest.mark.timeout(420)
def test_relay_sse_streams_all_end_with_done(quick_run):
    results, _, _ = quick_run
    for series in ("upstream", "demo"):
        level = results["capacity"]["relay-gevent-sse"][series]["levels"][0]
        assert level["finishes"] == {"done": level["streams_measured"]}
    assert results["latency"]["relay-gevent"]["direct_client"] == "openai"


def test_relay_sse_latency_baseline_is_the_same_raw_reader():
    assert direct_client(TARGETS["relay-gevent-sse"]["kind"]) == "openai-http"
    assert direct_client(TARGETS["relay-gevent"]["kind"]) == "openai"


@pytest.mark.timeout(420)
def test_loadgen_offers_deflate_which_the_relay_declines(quick_run):
    results, _, _ = quick_run
    for series in ("upstream", "demo"):
        relay = results["capacity"]["relay-gevent"][series]["levels"][0]
        assert relay["deflate_connections"] == 0
        # uvicorn accepts it by default: proof that the offer is made.
        peer = results["capacity"]["sio-asgi"][series]["levels"][0]
        assert peer["deflate_connections"] == 50


def test_verdict_names_each_outcome():
    level = {"invalid": [], "passes": True, "gross_failure": False}
    assert verdict(level) == "pass"
    assert verdict(level | {"passes": False}) == "FAIL"
    lagging = level | {"invalid": ["generator 0 loop lag p99 30 ms"]}
    assert verdict(lagging) == "INVALID: generator 0 loop lag p99 30 ms"
    assert verdict(lagging | {"passes": False, "gross_failure": True}) == (
        "FAIL by far (in an INVALID run: generator 0 loop lag p99 30 ms)"
    )
    failed = {"error": "RuntimeError: no worker"}
    assert verdict(failed) == "FAIL: RuntimeError: no worker"
    assert verdict({"skipped": "lower levels failed"}) == "skipped"


def test_capacity_is_the_last_valid_pass_before_a_failure():
    def level(streams, passes, invalid=(), gross=False):
        return {
            "streams": streams,
            "passes": passes,
            "invalid": list(invalid),
            "gross_failure": gross,
        }

    ramp = [level(100, True), level(250, False, ["lag"]), level(500, False)]
    assert capacity_of(ramp) == (100, "levels [250] were INVALID: it may be higher")
    ramp = [level(100, True), level(250, False), level(500, True)]
    assert capacity_of(ramp) == (100, "")
    ramp = [level(100, True), level(250, False, ["lag"], gross=True), level(500, True)]
    assert capacity_of(ramp) == (100, "")


def test_stop_kills_a_server_that_ignores_sigterm_and_its_forked_worker():
    # A "master" that forks a worker, prints its pid, and ignores SIGTERM, as does
    # the worker: stop() must end both.
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    worker = int(proc.stdout.readline())
    started = time.monotonic()
    stop(proc, 0.5, worker=worker)
    assert proc.returncode == -9
    assert not Path(f"/proc/{worker}").exists() or _zombie(worker)
    assert time.monotonic() - started < 10
    proc.stdout.close()


def _zombie(pid):
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "Z"
