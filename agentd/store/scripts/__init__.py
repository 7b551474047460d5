"""Every Lua script agentd runs on Redis: each step of a session, a turn, a shared-state
document, a single-flight, the job queue, a response record and an API key record is one
script (one round trip, atomic on the keys' shard). The keys they get are formatted in
:mod:`agentd.store.keys`.

One module per owner of the keys (:mod:`.sessions` with the turns, :mod:`.state`,
:mod:`.locks`, :mod:`.queue`, :mod:`.records`, :mod:`.keyring`) and :class:`Script` in
:mod:`.script`; import the scripts from here.
"""

from __future__ import annotations

from .keyring import KEY_CREATE, KEY_DELETE, KEY_UPDATE
from .locks import EMIT, LEAD, RELEASE_LOCK, RENEW_LOCK
from .queue import ACK_JOB, ENQUEUE, QUEUE_DEPTH, RENEW_JOB, RETRY_JOB
from .records import (
    RECORD_CANCEL,
    RECORD_CREATE,
    RECORD_DELETE,
    RECORD_START,
    RECORD_STEP,
    RECORD_UPDATE,
    RECORD_WRITE,
)
from .script import Script
from .sessions import (
    APPEND,
    BEGIN_TURN,
    CREATE,
    DELETE,
    DELETE_MESSAGE,
    END_TURN,
    GET_META,
    HISTORY,
    INTERRUPT_TURN,
    LIST_SESSIONS,
    LOAD,
    PUBLISH,
    RENEW_TURN,
    UPDATE_META,
)
from .state import STATE_INDEX, STATE_NAMESPACES, STATE_PAGE, STATE_REMOVE, STATE_WRITE

__all__ = (
    "ACK_JOB",
    "APPEND",
    "BEGIN_TURN",
    "CREATE",
    "DELETE",
    "DELETE_MESSAGE",
    "EMIT",
    "END_TURN",
    "ENQUEUE",
    "GET_META",
    "HISTORY",
    "INTERRUPT_TURN",
    "KEY_CREATE",
    "KEY_DELETE",
    "KEY_UPDATE",
    "LEAD",
    "LIST_SESSIONS",
    "LOAD",
    "PUBLISH",
    "QUEUE_DEPTH",
    "RECORD_CANCEL",
    "RECORD_CREATE",
    "RECORD_DELETE",
    "RECORD_START",
    "RECORD_STEP",
    "RECORD_UPDATE",
    "RECORD_WRITE",
    "RELEASE_LOCK",
    "RENEW_JOB",
    "RENEW_LOCK",
    "RENEW_TURN",
    "RETRY_JOB",
    "STATE_INDEX",
    "STATE_NAMESPACES",
    "STATE_PAGE",
    "STATE_REMOVE",
    "STATE_WRITE",
    "UPDATE_META",
    "Script",
)
