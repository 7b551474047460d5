"""A worker settles its start-up heap before it serves: what start-up left as garbage is
collected, and the rest is frozen, so the full collections that come under load walk
only what was made since (each used to stall every connection of the worker ~100 ms)."""

from __future__ import annotations

import gc
import os
import re
import weakref
from collections.abc import Callable

from agentd.proc import heap

from .procs import AgentdProcess


class _Node:
    other: _Node | None = None


def test_settle_collects_the_garbage_then_freezes_the_rest() -> None:
    kept = [_Node()]
    cycle = _Node()
    cycle.other = cycle  # garbage only a collection finds
    gone = weakref.ref(cycle)
    del cycle
    try:
        frozen = heap.settle()
        assert gone() is None, "garbage was frozen instead of collected"
        assert frozen == gc.get_freeze_count() > 0
        # A full collection walks the oldest generation: it no longer holds what lives.
        assert not any(o is kept for o in gc.get_objects(generation=2))
        assert len(gc.get_objects(generation=2)) < frozen / 10
    finally:
        gc.unfreeze()


def test_workers_forked_in_inherited_get_the_supervisors_heap_frozen() -> None:
    """The supervisor collects once and forks with its heap frozen: a worker's own
    collection walks none of it. The supervisor itself collects as before afterwards."""
    kept = _Node()
    cycle = _Node()
    cycle.other = cycle
    gone = weakref.ref(cycle)
    del cycle
    before = gc.get_freeze_count()
    with heap.inherited():
        assert gone() is None, "garbage was frozen instead of collected"
        pid = os.fork()
        if pid == 0:  # the worker: what it inherited is out of every collection's way
            walked = any(o is kept for o in gc.get_objects(generation=2))
            os._exit(1 if walked or gc.get_freeze_count() <= before else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.get_freeze_count() == before
    assert any(o is kept for o in gc.get_objects(generation=2))


def test_a_worker_serves_with_its_start_up_heap_frozen(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    proc = agentd_instance()
    found = re.search(r"worker \d+ serving \(.*, (\d+) objects frozen\)", proc.log())
    assert found is not None, proc.log()
    assert int(found.group(1)) > 10_000  # modules, classes, the app: not a handful
