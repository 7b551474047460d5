"""A Lua script as agentd runs it: its text, with the shared names filled in, and its
SHA1 for EVALSHA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..codec import SESSION_DELETED
from ..keys import AGENT_INDEX_JOIN, JOB_GROUP


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, for EVALSHA with an EVAL fallback on NOSCRIPT.

    ``$GROUP`` (the queue's consumer group) and ``$DELETED`` (a session's deleted event)
    in the text are filled in from their one definition.
    """

    name: str
    text: str
    # Hashed once: every EVALSHA sends it, so a turn's two calls must not hash the text.
    sha: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = self.text.replace("$GROUP", JOB_GROUP).replace("$DELETED", SESSION_DELETED.decode())
        text = text.replace("$AGENT_JOIN", AGENT_INDEX_JOIN)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "sha", hashlib.sha1(text.encode()).hexdigest())
