"""CPU quotas with the kernel's CFS bandwidth control: a cgroup per process.

On a 2-core machine two workers and the load generator cannot each have a core, so
"do two workers serve twice what one does" is answered by giving every serving process
the same share of a CPU (say 0.4): one worker at 0.4 CPU against two at 0.4 each, all
of it fitting beside the generator. A process under such a quota that still had work
to do used its quota and was throttled; ``cpu.stat`` says how often.

cgroup v2 (``cpu.max``) is used where its ``cpu`` controller is enabled, else cgroup v1
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); creating groups needs root (or a
delegated subtree). ``unavailable()`` gives the reason when neither works, so a scenario
can say why it skipped instead of measuring without the quota.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ("PERIOD_US", "WEIGHT", "CpuQuota", "Hierarchy", "find_hierarchy", "quota", "unavailable")

# 10 ms: a throttled process waits at most the rest of a short period, not of the
# default 100 ms one, so latency under a quota stays in the milliseconds.
PERIOD_US = 10_000
# A quota caps a process; it does not guarantee it the CPU when other tenants keep the
# cores busy. Groups also get this many times the default CPU weight (cgroup v1
# cpu.shares 1024, v2 cpu.weight 100) so that, up to its quota, a measured process wins
# the CPU from other processes of the machine: the quota, not the neighbours, bounds it.
WEIGHT = 10
V1 = Path("/sys/fs/cgroup/cpu")
V2_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


@dataclass(frozen=True)
class Hierarchy:
    """Where quota groups are made: a cgroup directory and its version (1 or 2)."""

    root: Path
    version: int

    def set_quota(self, group: Path, cpus: float) -> None:
        quota = max(1000, round(cpus * PERIOD_US))
        if self.version == 2:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))

    def set_weight(self, group: Path, times: int) -> None:
        if self.version == 2:
            (group / "cpu.weight").write_text(str(100 * times))
        else:
            (group / "cpu.shares").write_text(str(1024 * times))


def _v2_root() -> Path | None:
    for mount in V2_MOUNTS:
        controllers = mount / "cgroup.controllers"
        with contextlib.suppress(OSError):
            if controllers.exists() and "cpu" in controllers.read_text().split():
                # Our groups live directly under the mount: its subtree must hand down cpu.
                subtree = mount / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
                return mount
    return None


def find_hierarchy() -> Hierarchy | None:
    """The cgroup hierarchy with a usable ``cpu`` controller, v2 first; None if none."""
    with contextlib.suppress(OSError):
        root = _v2_root()
        if root is not None:
            return Hierarchy(root, 2)
    if (V1 / "cpu.cfs_quota_us").exists():
        return Hierarchy(V1, 1)
    return None


def unavailable() -> str | None:
    """Why CPU quotas cannot be set here (None when they can): tried by making a group."""
    hierarchy = find_hierarchy()
    if hierarchy is None:
        return "no cgroup cpu controller (cgroup v2 cpu.max or v1 cpu.cfs_quota_us) is mounted"
    probe = hierarchy.root / f"bench-probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        probe.mkdir()
        hierarchy.set_quota(probe, 0.5)
        hierarchy.set_weight(probe, WEIGHT)
    except OSError as exc:
        return f"cannot make a cgroup with a CPU quota under {hierarchy.root}: {exc}"
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return None


@dataclass
class CpuQuota:
    """Processes each under a quota of ``cpus`` CPUs (or, with ``capped=False``, none),
    in a cgroup of its own with ``WEIGHT`` times the default CPU weight.

    Use as a context manager: leaving it moves any process still in a group back to the
    root group and removes the groups.
    """

    cpus: float
    hierarchy: Hierarchy
    prefix: str = "bench"
    groups: dict[int, Path] = field(default_factory=dict)  # pid -> its group

    def place(self, pid: int, capped: bool = True) -> None:
        """Move ``pid`` (all its threads) into a new group: under the quota when
        ``capped``, else only weighted (the load generator, which must not starve)."""
        group = self.hierarchy.root / f"{self.prefix}-{os.getpid()}-{pid}"
        group.mkdir()
        self.groups[pid] = group
        if capped:
            self.hierarchy.set_quota(group, self.cpus)
        self.hierarchy.set_weight(group, WEIGHT)
        (group / "cgroup.procs").write_text(str(pid))

    def throttling(self) -> dict[int, tuple[int, int]]:
        """Per placed pid: (CFS periods it ran in, periods it was throttled in)."""
        out: dict[int, tuple[int, int]] = {}
        for pid, group in self.groups.items():
            stat: dict[str, int] = {}
            with contextlib.suppress(OSError):
                for line in (group / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    stat[key] = int(value)
            out[pid] = (stat.get("nr_periods", 0), stat.get("nr_throttled", 0))
        return out

    def release(self) -> None:
        """Move what is left in the groups back to the root, then remove the groups."""
        for group in self.groups.values():
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (self.hierarchy.root / "cgroup.procs").write_text(pid)
            # A process that just exited may linger a moment as a zombie in the group.
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.groups.clear()

    def __enter__(self) -> CpuQuota:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def quota(cpus: float, pids: list[int], prefix: str = "bench") -> Iterator[CpuQuota]:
    """``pids`` each under a ``cpus`` quota for the block (raises if quotas are unavailable)."""
    hierarchy = find_hierarchy()
    if hierarchy is None:
        raise OSError(unavailable() or "no cgroup cpu controller")
    with CpuQuota(cpus, hierarchy, prefix) as held:
        for pid in pids:
            held.place(pid)
        yield held
