"""Requests and tokens by tenant, with a bounded number of tenant labels."""

from __future__ import annotations

from prometheus_client import Counter

from .worker import Metrics

__all__ = ("TENANT_LABELS", "TenantMetrics")

# Tenants a worker labels by name in the per-tenant series; the others share "other".
TENANT_LABELS = 100


class TenantMetrics:
    """Requests and tokens by tenant, with bounded label cardinality: the tenants named in
    the config, then the first :data:`TENANT_LABELS` others a worker meets, get a label of
    their own; every later tenant is counted as ``other`` (a flood of tenants cannot grow
    the series without bound). Each worker picks its own first ones, so after a restart
    a tenant may move between its own label and ``other``."""

    def __init__(self, metrics: Metrics, named: tuple[str, ...] = ()) -> None:
        reg = metrics._registry
        self.requests = Counter(
            "agentd_tenant_requests",
            "Requests of API keys and connection tokens, by tenant and outcome (admitted, "
            "rate_limited, quota_exceeded)",
            ["tenant", "outcome"],
            registry=reg,
        )
        self.tokens = Counter(
            "agentd_tenant_tokens",
            "Tokens charged to a tenant, by kind (prompt, completion)",
            ["tenant", "kind"],
            registry=reg,
        )
        self._named = set(named)
        self._seen: set[str] = set()

    def label(self, tenant: str) -> str:
        if tenant in self._named or tenant in self._seen:
            return tenant
        if len(self._seen) < TENANT_LABELS:
            self._seen.add(tenant)
            return tenant
        return "other"

    def request(self, tenant: str, outcome: str, n: int = 1) -> None:
        self.requests.labels(self.label(tenant), outcome).inc(n)

    def charged(self, tenant: str, prompt: int, completion: int) -> None:
        label = self.label(tenant)
        if prompt:
            self.tokens.labels(label, "prompt").inc(prompt)
        if completion:
            self.tokens.labels(label, "completion").inc(completion)
