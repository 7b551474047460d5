"""The run's headline: one row per agentd figure with its ratios, and generator-limit flags."""

from __future__ import annotations

from typing import Any

__all__ = ("NEAR_CEILING", "flag_generator_limits", "summary_rows")

NEAR_CEILING = 0.8  # a result at this share of the generator's ceiling (or more) is flagged


def flag_generator_limits(records: list[dict[str, Any]], ceiling: dict[str, Any] | None) -> None:
    """Mark runs the generator may have capped: its CPU was saturated while the server's
    was not, or the rate came within ``NEAR_CEILING`` of what it reached against nginx."""
    caps = (ceiling or {}).get("figures") or {}
    for record in records:
        for run in record.get("runs", []):
            cap = (caps.get(run.get("generator")) or {}).get("rps")
            near = bool(cap) and run.get("rate") is None and run["rps"] >= NEAR_CEILING * cap
            run["generator_limited"] = near or run.get("limited_by", "").startswith("generator")
            if cap:
                run["share_of_generator_ceiling"] = round(run["rps"] / cap, 3)


def _figure(ratio: dict[str, Any]) -> str:
    label = f" ({ratio['label']})" if ratio.get("label") else ""
    conc = f" at c={ratio['concurrency']}" if ratio.get("concurrency") else ""
    if ratio.get("label") == "idle":
        return f"{ratio['target']} {ratio['unit']} with {ratio['concurrency']} open"
    return f"{ratio['target']} {ratio['unit']}{conc}{label}"


def summary_rows(records: list[dict[str, Any]], main_concurrency: int) -> list[dict[str, Any]]:
    """Rows of (scenario, figure, value, unit, {baseline: agentd / baseline}).

    Sweeps contribute their main concurrency only; the per-level ratios are in the
    scenario's own table.
    """
    rows: list[dict[str, Any]] = []
    for record in records:
        ratios = record.get("ratios", [])
        at_main = [r for r in ratios if r.get("concurrency") == main_concurrency]
        chosen = at_main or ratios
        grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in chosen:
            key = (r["metric"], r["target"], r.get("label", ""))
            row = grouped.setdefault(
                key,
                {
                    "scenario": record["name"],
                    "figure": _figure(r),
                    "metric": r["metric"],
                    "value": r["value"],
                    "unit": r["unit"],
                    "higher_is_better": r.get("higher_is_better", True),
                    "ratios": {},
                },
            )
            row["ratios"][r["baseline"]] = r["ratio"]
            row["errors"] = max(row.get("errors", 0), r.get("errors") or 0)
            if r.get("other_cpu") is not None:
                row["other_cpu"] = max(row.get("other_cpu", 0.0), r["other_cpu"])
        rows += grouped.values()
        for name, value in (record.get("figures") or {}).items():
            if name.startswith("added_") and isinstance(value, (int, float)):
                rows.append(
                    {
                        "scenario": record["name"],
                        "figure": name.replace("_", " "),
                        "metric": name,
                        "value": value,
                        "unit": "ms",
                        "higher_is_better": False,
                        "ratios": {},
                    }
                )
        if record["name"] == "soak" and record.get("status") == "ok":
            figs = record["figures"]
            rows.append(
                {
                    "scenario": "soak",
                    "figure": "agentd RSS growth",
                    "metric": "rss_growth",
                    "value": figs.get("rss_growth_mb_per_min"),
                    "unit": "MiB/min",
                    "higher_is_better": False,
                    "ratios": {"p99 last/first window": figs.get("p99_drift")},
                }
            )
    return rows
