"""PNG plots for report.md, with matplotlib (the ``bench`` extra); none without it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .curves_report import curve_plots

__all__ = ("make_plots",)

COLORS = {
    "agentd": "#d62728",
    "nginx": "#2ca02c",
    "aiohttp": "#1f77b4",
    "aiohttp-2p": "#aec7e8",
    "fastapi": "#9467bd",
    "upstream": "#7f7f7f",
    "agentd-1w": "#ff7f0e",
    "agentd-2w": "#8c564b",
}
PCTS = ("p50", "p90", "p99", "p99.9")


def _color(name: str) -> str:
    return COLORS.get(name, "#17becf")


def _sweeps(results: dict[str, Any], plt: Any, outdir: Path) -> tuple[str, str] | None:
    swept = [
        r
        for r in results["scenarios"]
        if len({run["concurrency"] for run in r.get("runs", [])}) > 1
        and r["name"].startswith("http-")
    ]
    if not swept:
        return None
    fig, axes = plt.subplots(2, len(swept), figsize=(6 * len(swept), 8), squeeze=False)
    for col, record in enumerate(swept):
        for target in dict.fromkeys(run["target"] for run in record["runs"]):
            runs = sorted(
                (r for r in record["runs"] if r["target"] == target), key=lambda r: r["concurrency"]
            )
            xs = [r["concurrency"] for r in runs]
            axes[0][col].plot(
                xs, [r["rps"] for r in runs], "o-", label=target, color=_color(target)
            )
            axes[1][col].plot(
                xs,
                [r["server_cpu_s_per_1k"] for r in runs],
                "o-",
                label=target,
                color=_color(target),
            )
        axes[0][col].set_title(f"{record['name']}: throughput")
        axes[0][col].set_ylabel("requests / s")
        axes[1][col].set_title(f"{record['name']}: server CPU per request")
        axes[1][col].set_ylabel("CPU seconds / 1,000 requests")
        for row in (0, 1):
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_xlabel("concurrent connections")
            axes[row][col].set_ylim(bottom=0)
            axes[row][col].grid(alpha=0.3)
            axes[row][col].legend()
    fig.tight_layout()
    fig.savefig(outdir / "throughput_vs_concurrency.png", dpi=90)
    plt.close(fig)
    return (
        "throughput_vs_concurrency.png",
        "Throughput and server CPU per request vs concurrency (closed loop)",
    )


def _latency(results: dict[str, Any], plt: Any, outdir: Path) -> tuple[str, str] | None:
    main = results["settings"]["main_concurrency"]
    panels = []
    for record in results["scenarios"]:
        runs = [
            r
            for r in record.get("runs", [])
            if r["concurrency"] == main
            and not r.get("rate")
            and r.get("latency_ms", {}).get("p50") is not None
            and "probe" not in (r.get("label") or "")
        ]
        if runs:
            panels.append((record["name"], runs))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for i, (name, runs) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        width = 0.8 / len(runs)
        for j, run in enumerate(runs):
            values = [run["latency_ms"][p] or 0 for p in PCTS]
            xs = [k + j * width for k in range(len(PCTS))]
            ax.bar(xs, values, width, label=run["target"], color=_color(run["target"]))
        ax.set_xticks([k + width * (len(runs) - 1) / 2 for k in range(len(PCTS))], PCTS)
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title(f"{name} at {main} connections")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(outdir / "latency_percentiles.png", dpi=90)
    plt.close(fig)
    return "latency_percentiles.png", f"Latency percentiles at {main} connections"


def _rss(results: dict[str, Any], plt: Any, outdir: Path) -> tuple[str, str] | None:
    records = [r for r in results["scenarios"] if r.get("rss_series")]
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(13, 5))
    labelled: set[str] = set()
    for record in records:
        starts = []
        for target, series in record["rss_series"].items():
            if not series:
                continue
            base = target if target in COLORS else target.split("-")[0]
            label = None if base in labelled else base
            labelled.add(base)
            ax.plot(
                [p[0] for p in series],
                [p[1] for p in series],
                color=_color(base),
                label=label,
                linewidth=1.2,
            )
            starts.append(series[0][0])
        if starts:
            ax.axvline(min(starts), color="#bbbbbb", linewidth=0.6)
            ax.text(
                min(starts),
                1.0,
                f" {record['name']}",
                rotation=90,
                fontsize=7,
                va="top",
                transform=ax.get_xaxis_transform(),
            )
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("server RSS, MiB (log; all its processes)")
    ax.set_title("Server RSS over the run (each line is one server process tree while it served)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "rss_over_time.png", dpi=90)
    plt.close(fig)
    return "rss_over_time.png", "Server RSS over time, every scenario"


def _rate_label(rate: float | None) -> str:
    return "none held the bound" if rate is None else f"{rate:,.0f} req/s"


def _open_loop(results: dict[str, Any], plt: Any, outdir: Path) -> tuple[str, str] | None:
    record = next((r for r in results["scenarios"] if r["name"] == "open-loop"), None)
    if not record or not record.get("figures"):
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    bound = None
    for target, fig_data in record["figures"].items():
        trials = sorted(fig_data["trials"], key=lambda t: t["rate"])
        ax.plot(
            [t["rate"] for t in trials],
            [t["p99"] for t in trials],
            "o-",
            label=f"{target} (max {_rate_label(fig_data['max_rate'])})",
            color=_color(target),
        )
        bound = fig_data["bound_ms"]
    if bound:
        ax.axhline(bound, color="black", linestyle="--", linewidth=0.8, label=f"bound {bound} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, requests / s (open loop)")
    ax.set_ylabel("p99 from intended send time, ms (log)")
    ax.set_title("Open loop: p99 vs offered rate")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "open_loop.png", dpi=90)
    plt.close(fig)
    return "open_loop.png", "Open-loop p99 (no coordinated omission) vs offered rate"


def make_plots(results: dict[str, Any], outdir: Path) -> list[tuple[str, str]]:
    """Write the PNGs; returns (file name, caption) pairs, empty without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for plot in (_sweeps, _latency, _rss, _open_loop):
        try:
            item = plot(results, plt, outdir)
        except Exception as exc:  # a broken plot must not lose the run's results
            results.setdefault("notes", []).append(f"plot {plot.__name__} failed: {exc}")
            continue
        if item:
            made.append(item)
    try:  # the cost curves: one PNG each
        made += curve_plots(results, plt, outdir)
    except Exception as exc:
        results.setdefault("notes", []).append(f"plot curve_plots failed: {exc}")
    return made
