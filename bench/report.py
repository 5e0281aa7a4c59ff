"""The chart (PNG) and the README's tables, from a results JSON.

python -m bench.report bench/results/latest.json   # redraw both
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .capacity import LABELS, all_levels
from .common import verdict


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(13, 13))
    (ttft_ax, gap_ax), (rate_ax, late_ax), (us_ax, cap_ax) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    direct_drawn = set()  # each baseline client once, from its first target
    for index, (target, result) in enumerate(results["latency"].items()):
        colour = colours[index % len(colours)]
        run = _first_valid(result["sustained"]["runs"])
        if run is None or "samples" not in run:
            continue
        client = result.get("direct_client", "openai")
        style = ":" if client == "openai" else "--"
        for ax, key in ((ttft_ax, "ttft_sample_ms"), (gap_ax, "gaps_sample_ms")):
            _cdf(ax, run["samples"]["target"][key], target, colour, "-")
            if client not in direct_drawn:
                label = f"direct ({client})"
                _cdf(ax, run["samples"]["direct"][key], label, "k", style)
        direct_drawn.add(client)
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
    styles = {"upstream": "-o", "demo": "--s"}
    for index, (target, result) in enumerate(results["capacity"].items()):
        colour = colours[index % len(colours)]
        for series, style in styles.items():
            if series not in result:
                continue
            run = [lv for lv in result[series]["levels"] if _measured(lv)]
            if not run:
                continue
            streams = [lv["streams"] for lv in run]
            levels_seen.update(streams)
            rates = [lv["tokens_per_s_delivered"] for lv in run]
            late = [max(lv["lateness_p99_ms"] or 0.1, 0.1) for lv in run]
            short = "test server" if series == "upstream" else "demo"
            label = f"{target}, {short} (capacity {result[series]['capacity']})"
            rate_ax.plot(streams, rates, style, color=colour, label=label)
            late_ax.plot(streams, late, style, color=colour, label=f"{target}, {short}")
            cost = [(lv["streams"], lv["cpu_us_per_token"]) for lv in run]
            cost = [(n, us) for n, us in cost if us]
            if cost:
                us_ax.plot(*zip(*cost, strict=True), style, color=colour, label=label)
            for lv, rate, lateness in zip(run, rates, late, strict=True):
                if lv["invalid"] and not lv["gross_failure"]:
                    for ax, y in ((rate_ax, rate), (late_ax, lateness)):
                        ax.plot(lv["streams"], y, "x", color="red", markersize=12)
    direct = (results.get("direct") or {}).get("levels", [])
    direct = [lv for lv in direct if _measured(lv) and lv["client"] == "raw HTTP"]
    if direct:
        late_ax.plot(
            [lv["streams"] for lv in direct],
            [max(lv["lateness_p99_ms"] or 0.1, 0.1) for lv in direct],
            ":^",
            color="k",
            label="no relay (raw HTTP reader)",
        )
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
    names = list(results["capacity"])
    for offset, series in ((-0.2, "upstream"), (0.2, "demo")):
        ramps = [results["capacity"][t].get(series, {}) for t in names]
        values = [ramp.get("capacity", 0) for ramp in ramps]
        cap_ax.barh(
            [i + offset for i in range(len(names))],
            values,
            height=0.4,
            label="through the test server" if series == "upstream" else "demo model",
        )
    cap_ax.set_yticks(range(len(names)), names, fontsize=7)
    cap_ax.set(
        title="Capacity (streams at 50 tokens/s, valid passing level)",
        xlabel="concurrent streams",
    )
    us_ax.set(
        title="Server CPU µs per token delivered (solid: via test server)",
        xlabel="concurrent streams",
        ylabel="µs of CPU per token",
    )
    rate_ax.set(
        title="Delivered tokens/s vs streams (dashed: demo model; red x: INVALID)",
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
        if ax.lines or ax.patches:
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


def _measured(level: dict[str, Any]) -> bool:
    return "skipped" not in level and "error" not in level


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
        raw = [
            target
            for target, result in results["latency"].items()
            if result.get("direct_client", "openai") != "openai"
        ]
        lines.append("")
        if raw:
            lines.append(
                "Added: the target minus `AsyncOpenAI` reading the test server; "
                "for "
                + ", ".join(raw)
                + ", minus the target's own client (the raw HTTP reader) reading it."
            )
            lines.append("")
    if results["capacity"] or results.get("direct"):
        lines += _capacity_tables(results)
    if results.get("invalid"):
        lines.append("INVALID runs (not used in any figure):")
        lines.append("")
        lines += [f"- {line}" for line in results["invalid"]]
        lines.append("")
    return "\n".join(lines)


_LEVEL_HEAD = (
    "| target | streams | delivered | lateness p50 / p99 ms | tokens/s delivered "
    "/ offered | server CPU | µs CPU per token | {upstream}server RSS MB "
    "| generator CPU | verdict |"
)


def _capacity_tables(results: dict[str, Any]) -> list[str]:
    """Through the test server (no relay first), the demo series, the summary."""
    lines = [f"Capacity {LABELS['upstream']} (the headline):", ""]
    lines += [
        _LEVEL_HEAD.format(upstream="test server CPU | "),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for level in (results.get("direct") or {}).get("levels", []):
        lines.append(_level_row(f"no relay ({level['client']})", level, True))
    for target, result in results["capacity"].items():
        for level in result.get("upstream", {}).get("levels", []):
            lines.append(_level_row(target, level, True))
    if any("demo" in r for r in results["capacity"].values()):
        lines += ["", f"Capacity, {LABELS['demo']}:", ""]
        lines += [
            _LEVEL_HEAD.format(upstream=""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for target, result in results["capacity"].items():
            for level in result.get("demo", {}).get("levels", []):
                lines.append(_level_row(target, level, False))
    lines += [
        "",
        'Levels past "one after the first failure" were skipped.',
        "",
        "| target | capacity through the test server | µs CPU per token "
        "(lowest level) | capacity, demo model | RSS per idle connection |",
        "|---|---:|---:|---:|---:|",
    ]
    for target, result in results["capacity"].items():
        idle = result["idle"]
        per = (
            f"{idle['rss_per_connection_kb']} KiB ({idle['connections']} connections)"
            if "rss_per_connection_kb" in idle
            else "n/a (" + idle.get("skipped", "") + ")"
        )
        cells = []
        for series in ("upstream", "demo"):
            ramp = result.get(series)
            if ramp is None:
                cells.append("–")
                continue
            note = f" ({ramp['capacity_note']})" if ramp["capacity_note"] else ""
            cells.append(f"{ramp['capacity']}{note}")
        measured = [lv for lv in all_levels(result) if lv["series"] == "upstream"]
        first = next((lv for lv in measured if _measured(lv)), None)
        cost = (
            f"{_v(first['cpu_us_per_token'])} ({first['streams']} streams)"
            if first
            else "–"
        )
        lines.append(f"| {target} | {cells[0]} | {cost} | {cells[1]} | {per} |")
    lines.append("")
    return lines


def _level_row(name: str, level: dict[str, Any], upstream: bool) -> str:
    columns = 10 if upstream else 9
    if not _measured(level):
        return (
            f"| {name} | {level['streams']} |"
            + " |" * (columns - 3)
            + (f" {verdict(level)} |")
        )
    gens = "+".join(f"{c:.2f}" for c in level["generator_cpu_cores"] if c)
    cells = [
        name,
        str(level["streams"]),
        _v(level["delivered_fraction"]),
        f"{_v(level['lateness_p50_ms'])} / {_v(level['lateness_p99_ms'])}",
        f"{_v(level['tokens_per_s_delivered'])} / {level['tokens_per_s_offered']:g}",
        _v(level["server_cpu_cores"]),
        _v(level["cpu_us_per_token"]),
    ]
    if upstream:
        cells.append(_v(level["upstream_cpu_cores"]))
    cells += [_v(level["server_memory"].get("rss_mb")), gens, verdict(level)]
    return "| " + " | ".join(cells) + " |"


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
