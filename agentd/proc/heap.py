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
"""

from __future__ import annotations

import gc

__all__ = ("settle",)


def settle() -> int:
    """Collect what start-up left behind, then freeze the rest; how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
