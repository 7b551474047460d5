"""The one import point for agentd's hot-path helpers.

The compiled module ``agentd._fastpath`` is used when it imports; otherwise, or
when ``AGENTD_NO_EXTENSIONS`` is set to a non-empty value other than ``0``, the
pure twin ``agentd._fastpath_py`` is. ``IMPLEMENTATION`` says which is active.

What lives here: the Redis Cluster hash slot (``key_slot``), the chat body parser and
its tables (``parse_chat``, ``ChatBody``, ``CHAT_*``, ``MAX_MESSAGES``, ``MAX_DEPTH``),
the response cache key (``cache_key``), the L1 response cache (``LRUCache``) and the
decoder of chunked upstream bodies (``ChunkDecoder``, ``ChunkError``, ``MAX_CHUNK_*``).
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

# The tables and ChatBody are the twin's own objects in both implementations.
CACHE_KEY_MAX_DEPTH = _fastpath_py.CACHE_KEY_MAX_DEPTH
CHAT_IGNORED_FIELDS = _fastpath_py.CHAT_IGNORED_FIELDS
CHAT_LOCAL_FIELDS = _fastpath_py.CHAT_LOCAL_FIELDS
CHAT_MESSAGE_FIELDS = _fastpath_py.CHAT_MESSAGE_FIELDS
CHAT_PARAMS = _fastpath_py.CHAT_PARAMS
CHAT_ROLES = _fastpath_py.CHAT_ROLES
MAX_CHUNK_DIGITS = _fastpath_py.MAX_CHUNK_DIGITS
MAX_CHUNK_LINE = _fastpath_py.MAX_CHUNK_LINE
MAX_DEPTH = _fastpath_py.MAX_DEPTH
MAX_MESSAGES = _fastpath_py.MAX_MESSAGES
SLOT_COUNT: int = _impl.SLOT_COUNT
ChatBody = _fastpath_py.ChatBody
ChunkError = _fastpath_py.ChunkError

key_slot = _impl.key_slot
cache_key = _impl.cache_key
parse_chat = _impl.parse_chat
LRUCache = _impl.LRUCache
ChunkDecoder = _impl.ChunkDecoder

__all__ = (
    "CACHE_KEY_MAX_DEPTH",
    "CHAT_IGNORED_FIELDS",
    "CHAT_LOCAL_FIELDS",
    "CHAT_MESSAGE_FIELDS",
    "CHAT_PARAMS",
    "CHAT_ROLES",
    "IMPLEMENTATION",
    "MAX_CHUNK_DIGITS",
    "MAX_CHUNK_LINE",
    "MAX_DEPTH",
    "MAX_MESSAGES",
    "SLOT_COUNT",
    "ChatBody",
    "ChunkDecoder",
    "ChunkError",
    "LRUCache",
    "cache_key",
    "key_slot",
    "parse_chat",
)
