"""The chart (PNG) and the README's tables, from a results JSON.

python -m bench.report bench/results/latest.json   # redraw both
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .capacity import all_levels, verdict


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ttft_ax, gap_ax), (rate_ax, late_ax) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    direct_drawn = False
    for index, (target, result) in enumerate(results["latency"].items()):
        colour = colours[index % len(colours)]
        run = _first_valid(result["sustained"]["runs"])
        if run is None:
            continue
        for ax, key in ((ttft_ax, "ttft_sample_ms"), (gap_ax, "gaps_sample_ms")):
            _cdf(ax, run["samples"]["target"][key], target, colour, "-")
            if not direct_drawn:
                _cdf(ax, run["samples"]["direct"][key], "direct (openai)", "k", ":")
        direct_drawn = True
    ttft_ax.set(
        title="TTFT, sustained load (first valid run)",
        xlabel="ms from request to first text",
        ylabel="fraction of streams",
    )
    gap_ax.set(
        title="Inter-chunk delay, sustained load",
        xlabel="ms between text events",
        ylabel="fraction of gaps",
        xscale="log",
    )

    levels_seen: set[int] = set()
    for index, (target, result) in enumerate(results["capacity"].items()):
        colour = colours[index % len(colours)]
        run = [
            lv for lv in result["levels"] if "skipped" not in lv and "error" not in lv
        ]
        if not run:
            continue
        streams = [lv["streams"] for lv in run]
        levels_seen.update(streams)
        rates = [lv["tokens_per_s_delivered"] for lv in run]
        late = [max(lv["lateness_p99_ms"] or 0.1, 0.1) for lv in run]
        label = f"{target} (capacity {result['capacity']})"
        rate_ax.plot(streams, rates, "-o", color=colour, label=label)
        late_ax.plot(streams, late, "-o", color=colour, label=target)
        for lv, rate, lateness in zip(run, rates, late, strict=True):
            if lv["invalid"] and not lv["gross_failure"]:
                for ax, y in ((rate_ax, rate), (late_ax, lateness)):
                    ax.plot(lv["streams"], y, "x", color="red", markersize=12)
    if levels_seen:
        top = max(levels_seen)
        config = results["meta"]["capacity_config"]
        # Streams are replaced at once, but each waits its TTFT before tokens flow.
        per_stream = config["tokens"] / (
            config["ttft"] + config["tokens"] / config["rate"]
        )
        rate_ax.plot(
            [0, top],
            [0, top * per_stream],
            "k:",
            label=f"offered ({config['rate']:g}/s each, after TTFT)",
        )
        late_ax.axhline(100, color="k", linestyle=":", label="100 ms limit")
    rate_ax.set(
        title="Delivered tokens/s vs concurrent streams (red x: INVALID)",
        xlabel="concurrent streams",
        ylabel="tokens/s delivered to clients",
    )
    late_ax.set(
        title="Token lateness p99 vs concurrent streams",
        xlabel="concurrent streams",
        ylabel="ms (log)",
        yscale="log",
    )
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    machine = results["meta"]["machine"]
    fig.suptitle(
        f"chatstream relay benchmark — {machine['nproc']} cores "
        f"({machine['cpu_model']}), Python {machine['python']}"
        + (" — QUICK MODE" if results["meta"]["quick"] else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _first_valid(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in runs if not r["invalid"]), runs[0] if runs else None)


def _cdf(ax, values: list[float], label: str, colour: str, style: str) -> None:
    if not values:
        return
    ordered = sorted(values)
    fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
    ax.plot(ordered, fractions, style, color=colour, label=label)


def tables(results: dict[str, Any]) -> str:
    """The README's result tables, as markdown."""
    lines = []
    if results["latency"]:
        lines += [
            "| target | mode | +TTFT p50 | +TTFT p99 | +gap p50 | +gap p99 "
            "| duration p99 ratio | valid runs | target CPU | generator CPU max "
            "| upstream CPU max |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for target, result in results["latency"].items():
            for mode in ("sustained", "burst"):
                s = result[mode]["summary"]
                lines.append(
                    f"| {target} | {mode} | {_v(s['added_ttft_p50_ms'])} "
                    f"| {_v(s['added_ttft_p99_ms'])} | {_v(s['added_gap_p50_ms'])} "
                    f"| {_v(s['added_gap_p99_ms'])} | {_v(s['duration_ratio_p99'])} "
                    f"| {s['valid_runs']}/{s['runs']} | {_v(s['target_server_cpu'])} "
                    f"| {_v(s['target_generator_cpu_max'])} "
                    f"| {_v(s['upstream_cpu_max'])} |"
                )
        lines.append("")
    if results["capacity"]:
        lines += [
            "| target | streams | delivered | lateness p50 / p99 ms | tokens/s "
            "delivered / offered | server CPU | server RSS MB | generator CPU "
            "| verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for target, result in results["capacity"].items():
            for lv in all_levels(result):
                name = (
                    target
                    + {
                        None: "",
                        "upstream": " via test server",
                        "direct": ": no relay, AsyncOpenAI to the test server",
                    }[lv.get("via")]
                )
                if "skipped" in lv:
                    lines.append(f"| {name} | {lv['streams']} | | | | | | | skipped |")
                    continue
                if "error" in lv:
                    lines.append(
                        f"| {name} | {lv['streams']} | | | | | | | {verdict(lv)} |"
                    )
                    continue
                gens = "+".join(f"{c:.2f}" for c in lv["generator_cpu_cores"] if c)
                lines.append(
                    f"| {name} | {lv['streams']} | {_v(lv['delivered_fraction'])} "
                    f"| {_v(lv['lateness_p50_ms'])} / {_v(lv['lateness_p99_ms'])} "
                    f"| {_v(lv['tokens_per_s_delivered'])} / "
                    f"{lv['tokens_per_s_offered']:g} | {_v(lv['server_cpu_cores'])} "
                    f"| {_v(lv['server_memory'].get('rss_mb'))} | {gens} "
                    f"| {verdict(lv)} |"
                )
        lines += [
            "",
            "| target | capacity (streams) | RSS per idle connection |",
            "|---|---:|---:|",
        ]
        for target, result in results["capacity"].items():
            idle = result["idle"]
            per = (
                f"{idle['rss_per_connection_kb']} KiB "
                f"({idle['connections']} connections)"
                if "rss_per_connection_kb" in idle
                else "n/a (" + idle.get("skipped", "") + ")"
            )
            note = f" ({result['capacity_note']})" if result["capacity_note"] else ""
            lines.append(f"| {target} | {result['capacity']}{note} | {per} |")
        lines.append("")
    if results.get("invalid"):
        lines.append("INVALID runs (not used in any figure):")
        lines.append("")
        lines += [f"- {line}" for line in results["invalid"]]
        lines.append("")
    return "\n".join(lines)


def _v(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json")
    data = json.loads(source.read_text())
    chart(data, source.parent / "bench.png")
    (source.parent / "table.md").write_text(tables(data))
    print(tables(data))
