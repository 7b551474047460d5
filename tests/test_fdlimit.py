"""``agentd serve`` raises its open-file soft limit to the hard one (one descriptor per
WebSocket); its workers inherit it. Checked in a child process started with a low limit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from agentd.proc.fdlimit import raise_nofile


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/limits")


def test_the_soft_limit_is_raised_to_the_hard_one_in_a_child() -> None:
    code = (
        "import resource;"
        "h = resource.getrlimit(resource.RLIMIT_NOFILE)[1];"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h));"
        "from agentd.proc.fdlimit import raise_nofile;"
        "print(raise_nofile(), h, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    now, hard, soft = (int(x) for x in out.stdout.split())
    assert now == soft
    assert soft == hard or hard == resource.RLIM_INFINITY
    assert soft > 256 or hard <= 256


def test_raising_again_keeps_the_limit() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_nofile() >= soft
    assert _soft_nofile(os.getpid()) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
