"""Helpers for the tests of deploy/: the system programs they run, and the series names
agentd exports (what alert rules, dashboards and autoscalers may refer to)."""

from __future__ import annotations

import re
import shutil
import subprocess

from prometheus_client.metrics import MetricWrapperBase

from agentd.metrics import BackendMetrics, JobMetrics, Metrics, SupervisorMetrics, ToolMetrics

from .procs import ROOT

__all__ = ("DEPLOY", "METRIC_NAME", "exported_series", "program", "run", "scraped_series")

DEPLOY = ROOT / "deploy"

# The Debian package that ships each program (scripts/ensure-system-deps installs it).
PACKAGE_OF = {"systemd-analyze": "systemd", "promtool": "prometheus", "kubectl": "kubectl"}

# An agentd series name inside a PromQL expression.
METRIC_NAME = re.compile(r"\bagentd_[a-z0-9_]+\b")

_SAMPLES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def program(name: str) -> str:
    """The path of a system program a test needs, or a failure that says how to get it."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} is not installed: run `make system-deps` (it runs "
            f"`scripts/ensure-system-deps {name}`; Debian package {PACKAGE_OF[name]})"
        )
    return path


def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a system program (by name) and return what it did, output captured."""
    return subprocess.run(
        [program(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout
    )


def exported_series() -> set[str]:
    """Every series name agentd's /metrics can show, read from the metric objects the
    workers and the supervisor create, named the way the exposition format names the
    samples of each type (a counter ``x`` is ``x_total``, a histogram ``x_bucket`` ...)."""
    metrics = Metrics()
    owners = (
        metrics, BackendMetrics(metrics), JobMetrics(metrics), ToolMetrics(metrics),
        SupervisorMetrics(),
    )  # fmt: skip
    names: set[str] = set()
    for owner in owners:
        for value in vars(owner).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():
                    names |= {family.name + suffix for suffix in _SAMPLES[family.type]}
    return names


def scraped_series(text: str) -> set[str]:
    """The series names in a /metrics answer."""
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
