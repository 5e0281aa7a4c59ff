"""The benchmark's quick mode runs end to end and reports what it should.

No timing is asserted: the figures depend on the machine. What is pinned is that
every stream measured arrived whole and the results hold the expected keys.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    "delivered_fraction",
    "lateness_p99_ms",
    "server_cpu_cores",
    "server_memory",
    "generator_cpu_cores",
    "generator_loop_lag_p99_ms",
    "invalid",
    "passes",
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """The JSON of one ``python -m bench --quick`` run, and its output folder."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "latest.json").read_text()), out, done.stdout


@pytest.mark.timeout(420)
def test_quick_mode_writes_results_chart_and_table(quick_results):
    results, out, stdout = quick_results
    assert set(results) >= {"meta", "latency", "capacity", "invalid"}
    machine = results["meta"]["machine"]
    assert machine["nproc"] > 0 and machine["cpu_model"] and machine["python"]
    assert (out / "bench.png").stat().st_size > 10_000
    assert "| target |" in (out / "table.md").read_text()
    # Every figure printed as ``name: figure``.
    assert all(": " in line for line in stdout.strip().splitlines())


@pytest.mark.timeout(420)
def test_every_latency_stream_arrived_whole(quick_results):
    results, _, _ = quick_results
    assert results["latency"]
    for result in results["latency"].values():
        for mode in ("sustained", "burst"):
            assert set(result[mode]["summary"]) >= LATENCY_FIGURES
            for run in result[mode]["runs"]:
                for role in ("direct", "target"):
                    figures = run[role]
                    assert figures["streams"] > 0
                    assert figures["complete"] == figures["streams"]
                    assert figures["delivered_fraction"] == 1.0
                    assert figures["ttft_p50_ms"] > 0
                    assert all(c is not None for c in figures["cpu"]["generators"])


@pytest.mark.timeout(420)
def test_every_capacity_stream_arrived_whole(quick_results):
    results, _, _ = quick_results
    assert results["capacity"]
    for result in results["capacity"].values():
        levels = [*result["levels"], result["upstream_variant"]]
        for level in levels:
            assert set(level) >= LEVEL_FIGURES
            assert level["streams_measured"] > 0
            assert level["streams_complete"] == level["streams_measured"]
            assert level["tokens_per_s_delivered"] > 0
            assert level["server_memory"]["rss_mb"] > 0
        assert result["capacity"] >= 0


@pytest.mark.timeout(420)
def test_idle_connections_are_measured_on_socketio_targets(quick_results):
    results, _, _ = quick_results
    idle = results["capacity"]["relay-eventlet"]["idle"]
    assert idle["connections"] > 0 and idle["connect_failures"] == 0
    assert idle["rss_after_mb"] > 0
    assert "skipped" in results["capacity"]["fastapi-sse"]["idle"]
