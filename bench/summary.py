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
            rows += _soak_rows(record["figures"], record.get("runs", []))
    return rows


def _soak_rows(figs: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The soak's headline: memory growth of the workers and of Redis, and what was lost
    (acknowledged turns missing from their history) or never answered (WebSocket turns
    with neither a reply nor an error, background responses never finished)."""
    other = max((r.get("other_cpu_util") or 0.0 for r in runs if r.get("rate")), default=None)
    drift = {"p99 last/first window": (figs.get("chat") or {}).get("p99_drift")}
    rows = []
    for key, figure, ratios in (
        ("rss_workers", "agentd workers RSS growth", drift),
        ("rss_redis", "redis-server RSS growth", {}),
    ):
        rows.append(
            {
                "scenario": "soak",
                "figure": figure,
                "metric": key,
                "value": (figs.get(key) or {}).get("mb_per_min"),
                "unit": "MiB/min",
                "higher_is_better": False,
                "ratios": ratios,
                "other_cpu": other,
            }
        )
    losses = figs.get("losses") or {}
    lost = sum(losses.get(k) or 0 for k in ("lost", "ws_unanswered", "background_not_terminal"))
    rows.append(
        {
            "scenario": "soak",
            "figure": "work lost or unanswered",
            "metric": "lost",
            "value": lost,
            "unit": "turns/responses",
            "higher_is_better": False,
            "ratios": {},
        }
    )
    return rows
