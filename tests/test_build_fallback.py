"""Without a C compiler the build falls back to the pure-Python fast path, with a notice,
instead of failing `make run` and `make test`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .procs import ROOT

pytestmark = pytest.mark.slow

SOURCES = ["Makefile", "setup.py", "pyproject.toml", "README.md", "scripts/ensure-system-deps",
           "agentd/__init__.py", "agentd/_fastpath.pyx"]  # fmt: skip


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What `make ext` reads, copied: the build must not touch the real tree."""
    for name in SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def test_make_ext_without_a_compiler_falls_back_with_a_notice(checkout: Path) -> None:
    venv = Path(sys.prefix)  # the test run's own environment, already set up
    stamp = venv / ".installed-stamp"
    env = {**os.environ, "CC": str(checkout / "no-such-cc")}  # a compiler that is not there
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", str(stamp), "ext", f"VENV={venv}"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "notice: the compiled fast path was not built" in result.stderr
    assert "pure-Python twin" in result.stderr
    assert not list((checkout / "agentd").glob("_fastpath*.so"))
    # The reason stays beside the sources for the tests that compare both builds.
    assert "no-such-cc" in (checkout / "agentd" / "_fastpath.fallback").read_text()


def test_a_build_that_works_again_forgets_the_fallback(checkout: Path) -> None:
    marker = checkout / "agentd" / "_fastpath.fallback"
    marker.write_text("no compiler\n")
    # Nothing to compile: the extension list is empty, so the build succeeds at once.
    result = subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
        cwd=checkout,
        env={**os.environ, "AGENTD_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
