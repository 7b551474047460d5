"""report.md: the summary with ratios, the plots, and each scenario's tables and commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .curves_report import curve_lines
from .machine import machine_line
from .plots import make_plots
from .progress import clock

__all__ = ("write_report",)

HOW_TO_READ = (
    "Each ratio is agentd's figure divided by the baseline's, both measured in this run on "
    "this machine with the same load. For req/s and max rate, above 1 means agentd does "
    "more; for CPU s/1k req, p99 and KiB/connection, below 1 means agentd costs less. "
    "nginx is the native ceiling, aiohttp the framework ceiling (no work behind the "
    "handler; aiohttp-2p the same with 2 processes, for agentd's 2 workers), FastAPI what a "
    'user would otherwise write. "other CPU" is the most CPU '
    "that other processes on the machine used during the runs behind a row (in CPUs); "
    "above 0.2 the row is marked noisy: prefer CPU s/1k req there, or run again. "
    '"errors" counts failed requests (non-2xx, socket errors, timeouts) in the runs '
    "behind a row: a ratio with errors is no result (see the scenario's table)."
)
CURVE_KEYS = ("curves", "points")  # shown by curve_lines, not as figures
NOISY = 0.2  # other processes used more than this many CPUs: the figure is suspect
BASELINE_ORDER = (
    "nginx",
    "aiohttp",
    "aiohttp-2p",
    "fastapi",
    "upstream",
    "agentd-1w",
    "aiohttp-1p",
    "single",
)


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    return str(value)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _noise(value: float | None) -> str:
    """Other processes' CPU use during the runs behind a figure; flagged when it is high."""
    if value is None:
        return ""
    return f"{value:.2f}" + (" ⚠ noisy" if value > NOISY else "")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _summary(results: dict[str, Any]) -> list[str]:
    rows = results["summary"]
    baselines = sorted(
        {b for r in rows for b in r["ratios"]},
        key=lambda b: (BASELINE_ORDER.index(b) if b in BASELINE_ORDER else 99, b),
    )
    body = []
    for r in rows:
        body.append(
            [
                r["scenario"],
                r["figure"],
                _num(r["value"]),
                *(_ratio(r["ratios"].get(b)) if b in r["ratios"] else "" for b in baselines),
                _noise(r.get("other_cpu")),
                f"⚠ {r['errors']:,}" if r.get("errors") else "0" if "errors" in r else "",
            ]
        )
    head = ["scenario", "figure", "agentd", *(f"÷ {b}" for b in baselines), "other CPU",
            "errors"]  # fmt: skip
    out = _table(head, body)
    return [*out, "", HOW_TO_READ]


def _runs_table(record: dict[str, Any]) -> list[str]:
    body = []
    for run in record["runs"]:
        lat = run.get("latency_ms") or {}
        flag = " ⚠" if run.get("generator_limited") else ""
        errors = run.get("error_count", 0)
        body.append(
            [
                run["target"],
                str(run.get("label") or ""),
                str(run["concurrency"]),
                _num(run.get("rate")),
                _num(run["rps"], 0) + flag,
                *(_num(lat.get(p)) for p in ("p50", "p90", "p99", "p99.9")),
                str(errors),
                _num(run.get("server_cpu_s_per_1k"), 3),
                _num(run.get("server_peak_rss_mb"), 1),
                _num(run.get("other_cpu_util")),
                run.get("limited_by", ""),
            ]
        )
    head = [
        "target",
        "label",
        "conns",
        "rate",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "CPU s/1k req",
        "peak RSS MiB",
        "other CPU",
        "limited by",
    ]
    return _table(head, body)


def _ratios_table(record: dict[str, Any]) -> list[str]:
    body = [
        [
            r["metric"],
            str(r.get("label") or ""),
            str(r.get("concurrency") or ""),
            r["target"],
            _num(r["value"]),
            r["baseline"],
            _num(r["baseline_value"]),
            _ratio(r["ratio"]),
        ]
        for r in record["ratios"]
    ]
    head = ["metric", "label", "conns", "target", "value", "baseline", "baseline value", "ratio"]
    return _table(head, body)


def _figures(figures: dict[str, Any]) -> list[str]:
    out = []
    for key, value in figures.items():
        if isinstance(value, dict):
            inner = ", ".join(
                f"{k} {_num(v) if not isinstance(v, (list, dict)) else '…'}"
                for k, v in value.items()
            )
            out.append(f"- **{key}**: {inner}")
        else:
            out.append(f"- **{key}**: {_num(value)}")
    return out


def _scenario(record: dict[str, Any]) -> list[str]:
    out = [f"### {record['name']}", "", record.get("summary", ""), ""]
    if record["status"] != "ok":
        out += [f"**{record['status']}**: {record.get('reason', '')}", ""]
    for note in record.get("notes", []):
        if "\n" in note:
            out += ["```", note.strip(), "```"]
        else:
            out.append(f"> {note}")
    out.append("")
    if record.get("runs"):
        out += [*_runs_table(record), ""]
    if record.get("ratios"):
        out += [*_ratios_table(record), ""]
    figures = {k: v for k, v in (record.get("figures") or {}).items() if k not in CURVE_KEYS}
    if figures:
        out += [*_figures(figures), ""]
    out += curve_lines(record)
    commands = [(f"server {name}", cmd) for name, cmd in record.get("server_commands", {}).items()]
    seen = set()
    for run in record.get("runs", []):
        if run["command"] not in seen:
            seen.add(run["command"])
            commands.append((f"load on {run['target']}", run["command"]))
    for name, fig in (record.get("figures") or {}).items():
        if isinstance(fig, dict) and "command" in fig:
            commands.append((f"load on {name}", fig["command"]))
    if "command" in record:
        commands.append(("command", record["command"]))
    if commands:
        out += ["<details><summary>exact commands</summary>", ""]
        out += [f"- {what}: `{cmd}`" for what, cmd in commands]
        out += ["", "</details>", ""]
    return out


def write_report(results: dict[str, Any], outdir: Path) -> Path:
    """Write report.md (and the plots beside it); returns its path."""
    plots = make_plots(results, outdir)
    ceiling = results.get("generator_ceiling") or {}
    lines = [
        f"# agentd benchmark: {results['mode']} run, {results['started_at']}",
        "",
        f"- **Machine**: {machine_line(results['machine'])}",
        f"- **Command**: `{results['command']}` (took {clock(results['elapsed_s'])})",
        f"- **CPU layout**: {results['layout']['description']}",
        f"- **Load average at start**: {results['machine'].get('loadavg_at_start')}",
    ]
    for gen, fig in (ceiling.get("figures") or {}).items():
        lines.append(
            f"- **Generator ceiling ({gen} vs nginx)**: {_num(fig['rps'], 0)} req/s "
            f"(generator CPU {_num(fig['generator_cpu_util'])}, nginx CPU "
            f"{_num(fig['server_cpu_util'])}; limited by {fig['limited_by']}). Runs at ≥ 80 % "
            f"of it, or with the generator's CPU saturated, are marked ⚠."
        )
    lines += [f"- **Note**: {n}" for n in results.get("notes", [])]
    lines += ["", "## Summary", "", *_summary(results), ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{caption}]({name})\n\n*{caption}*\n" for name, caption in plots]
    else:
        lines += ["(No plots: matplotlib is not installed; `pip install -e '.[bench]'`.)", ""]
    lines += ["## Scenarios", ""]
    if ceiling:
        lines += _scenario(ceiling)
    for record in results["scenarios"]:
        lines += _scenario(record)
    lines += ["See bench/README.md for the method and how to read each figure.", ""]
    path = outdir / "report.md"
    path.write_text("\n".join(lines))
    return path
