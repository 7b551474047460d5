"""The cost curves in report.md: a PNG per curve and a table per series with its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ("curve_lines", "curve_plots")

COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _curves(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (record["name"], c)
        for record in results["scenarios"]
        for c in (record.get("figures") or {}).get("curves") or []
    ]


def curve_plots(results: dict[str, Any], plt: Any, outdir: Path) -> list[tuple[str, str]]:
    """One PNG per curve, log-log (a flat curve is horizontal, a linear one has slope 1),
    each series with its fitted line dashed."""
    made = []
    for scenario, c in _curves(results):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, line in enumerate(c["series"]):
            pts = [p for p in line["points"] if p[1] is not None and p[1] > 0]
            if not pts:
                continue
            color = COLORS[i % len(COLORS)]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            shown = {True: "shown", False: "NOT shown", None: "?"}[line.get("shown")]
            label = f"{line['label']} (predicted {line['predicted']}: {shown})"
            ax.plot(xs, ys, "o-", color=color, label=label)
            slope, intercept = line.get("slope"), line.get("intercept")
            if line["predicted"] == "linear" and slope is not None and intercept is not None:
                fitted = [intercept + slope * x for x in xs]
                if all(v > 0 for v in fitted):
                    ax.plot(xs, fitted, "--", color=color, linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{c['x_label']} (log)")
        ax.set_ylabel(f"{c['y_label']} (log)")
        ax.set_title(f"{scenario}: {c['title']}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"curve_{c['name']}.png"
        fig.savefig(outdir / name, dpi=90)
        plt.close(fig)
        made.append((name, f"{c['title']} (log-log; dashed: the fitted line)"))
    return made


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def curve_lines(record: dict[str, Any]) -> list[str]:
    """The scenario's curves: why the design predicts each shape, the points and the fit."""
    out: list[str] = []
    points = (record.get("figures") or {}).get("points")
    noise = [
        p["other_cpu_util"]
        for p in (points if isinstance(points, list) else [])
        if isinstance(p, dict) and p.get("other_cpu_util") is not None
    ]
    if noise:
        warn = " (noisy: trust CPU and memory per unit over latency)" if max(noise) > 0.2 else ""
        span = f"{min(noise):.2f} to {max(noise):.2f}"
        out += [f"Other processes kept {span} CPUs busy during the points{warn}.", ""]
    for c in (record.get("figures") or {}).get("curves") or []:
        out += [f"**{c['title']}** ({c['y_label']} vs {c['x_label']}; plot "
                f"`curve_{c['name']}.png`). {c['why']}", ""]  # fmt: skip
        xs = sorted({p[0] for line in c["series"] for p in line["points"]})
        head = ["series", "predicted", *(_num(x) for x in xs), "slope", "r²", "largest ÷ smallest",
                "per-unit ratio", "verdict"]  # fmt: skip
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for line in c["series"]:
            by_x = {p[0]: p[1] for p in line["points"]}
            row = [line["label"], line["predicted"], *(_num(by_x.get(x)) for x in xs),
                   _num(line.get("slope")), _num(line.get("r2")),
                   _num(line.get("last_over_first")), _num(line.get("per_unit_ratio")),
                   line.get("verdict", "")]  # fmt: skip
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return out
