"""The one import point for agentd's hot-path helpers.

The compiled module ``agentd._fastpath`` is used when it imports; otherwise, or
when ``AGENTD_NO_EXTENSIONS`` is set to a non-empty value other than ``0``, the
pure twin ``agentd._fastpath_py`` is. ``IMPLEMENTATION`` says which is active.
"""

from __future__ import annotations

import os
from types import ModuleType

from . import _fastpath_py

NO_EXTENSIONS = os.environ.get("AGENTD_NO_EXTENSIONS", "") not in ("", "0")


def _load() -> tuple[ModuleType, str]:
    if not NO_EXTENSIONS:
        try:
            from . import _fastpath  # type: ignore[attr-defined]
        except ImportError:
            pass
        else:
            return _fastpath, "cython"
    return _fastpath_py, "python"


_impl, IMPLEMENTATION = _load()

SLOT_COUNT: int = _impl.SLOT_COUNT
key_slot = _impl.key_slot

__all__ = ("IMPLEMENTATION", "SLOT_COUNT", "key_slot")
