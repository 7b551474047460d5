"""The worker's heap, settled once it serves, so that Python's cyclic garbage collector
stops walking what lives for the whole process.

A worker starts with some 110,000 tracked objects (modules, classes, functions, the
app, its routes, config) that never die. A full (oldest-generation) collection walks
every one of them, and under load one comes every few seconds: with a turn's objects
surviving the young collections, the oldest generation keeps growing by a quarter, which
is CPython's trigger. Each took about 100 ms on the reference machine, stalling every
connection of the worker at once (the 100 ms at the top of the WebSocket turns' p99).

``gc.freeze()`` moves everything alive at that moment to a permanent generation that no
collection walks: collections stay as frequent, but only walk what was made since.
Garbage among the frozen objects is never collected, so it is collected first.

Most of those objects come from the supervisor (the modules it imported before forking),
so it settles its heap before a fork (:func:`inherited`): each worker inherits them
frozen, and its own collection walks only what it built since — once per start instead
of once per worker, and without writing to (so copying) the pages it shares with the
supervisor. The supervisor unfreezes its own heap after forking: it keeps collecting
its garbage as before.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ("inherited", "settle")


def settle() -> int:
    """Collect what start-up left behind, then freeze the rest; how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def inherited() -> Iterator[None]:
    """Around forking workers: collect, and freeze what is left while they fork."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
