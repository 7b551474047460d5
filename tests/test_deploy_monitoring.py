"""The Prometheus alert rules and the Grafana dashboard in deploy/: valid for promtool,
every alert unit-tested, and built only on metrics agentd really exports."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from .deploy_tools import DEPLOY, METRIC_NAME, exported_series, run, scraped_series
from .procs import AgentdProcess, http_get

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "agentd.json"
# A series name right before its label matchers.
SELECTED = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
# Besides agentd's own: the scrape's health, which Prometheus records for every target.
PROMETHEUS_SERIES = {"up"}


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def _series_in(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr)) | set(SELECTED.findall(expr))


def test_the_alert_rules_pass_promtool_check() -> None:
    result = run("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_promtool_unit_tests() -> None:
    result = run("promtool", "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = yaml.safe_load(RULE_TESTS.read_text())
    firing = {
        case["alertname"]
        for test in tested["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names))
    assert set(names) == firing, set(names) ^ firing


def test_the_alerts_cover_what_operators_page_on() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _alerts()}
    assert "up{" in exprs["AgentdInstanceDown"]
    assert 'status="429"' in exprs["AgentdRateLimitRefusalsSpiking"]
    assert "agentd_upstream_breaker_state" in exprs["AgentdBackendBreakerOpen"]
    assert "agentd_jobs_oldest_queued_seconds" in exprs["AgentdJobsWaitingTooLong"]
    assert "agentd_jobs_dead_letters" in exprs["AgentdDeadLettersGrowing"]
    for rule in _alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_alerts_and_dashboard_use_only_metrics_agentd_exports() -> None:
    exported = exported_series()
    exprs = [rule["expr"] for rule in _alerts()] + _dashboard_queries()
    assert len(_dashboard_queries()) >= 25
    for expr in exprs:
        unknown = _series_in(expr) - exported - PROMETHEUS_SERIES
        assert not unknown, (unknown, expr)
    used = set().union(*(_series_in(e) for e in exprs))
    # The dashboard shows every family agentd exports (a new metric needs a panel).
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in used}
    assert families <= shown, families - shown


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's variables filled in)."""
    fill = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}
    rules = []
    for i, query in enumerate(_dashboard_queries()):
        for variable, value in fill.items():
            query = query.replace(variable, value)
        if query.startswith("label_values("):  # Grafana's own function
            query = query.removeprefix("label_values(").rsplit(",", 1)[0]
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_real_agentds_metrics_are_the_ones_the_rules_are_checked_against(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    proc = agentd_instance('[[backends]]\nname = "echo"\ntype = "echo"\n')
    body = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        proc.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    assert proc.get("/readyz")[0] == 200
    status, _, raw = http_get(proc.url + "/metrics")
    assert status == 200
    text = raw.decode()
    scraped = {n for n in scraped_series(text) if n.startswith("agentd_")}
    assert scraped, text[:500]
    assert scraped <= exported_series(), scraped - exported_series()
    # The label values the rules select on are the ones agentd writes.
    for selector in (
        'route="/readyz"',
        'route="/v1/chat/completions"',
        'status="200"',
        'stage="session"',
        'partition="default"',
    ):
        assert selector in text, selector
