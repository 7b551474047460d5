"""Who is calling: the identity every request carries once authenticated."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import SCOPES, LimitsConfig
from ..errors import Forbidden
from ..store import no_session

__all__ = ("ALL_SCOPES", "OPEN", "Identity")

ALL_SCOPES = frozenset(SCOPES)


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    ``tenant`` owns every object the caller creates or reads; ``""`` is the unnamed
    tenant of ``auth.mode = "none"`` (and of the operator's admin key).
    """

    tenant: str
    scopes: frozenset[str]
    # "open" (auth.mode = "none"), "admin" (the operator's key from the environment),
    # "key" (an API key) or "token" (a connection token).
    kind: str
    # The API key's id: safe to log and show, never the key itself.
    key_id: str = ""
    # A connection token's subject (the end user, as the operator's backend named them).
    subject: str = ""
    # The agents it may use; None: every agent.
    agents: frozenset[str] | None = None
    # The sessions it may use (connection tokens may be narrowed); None: every session.
    sessions: frozenset[str] | None = None
    # The key's own limits (the tenant's are in the config).
    limits: LimitsConfig | None = None
    # Unix seconds when the credential stops being valid; None: never.
    expires_at: float | None = None

    def require(self, scope: str) -> None:
        """``Forbidden`` unless the identity holds ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(f"this credential lacks the {scope!r} scope")

    def check_agent(self, agent: str) -> None:
        if self.agents is not None and agent not in self.agents:
            raise Forbidden(f"this credential may not use agent {agent!r}")

    def check_session(self, session_id: str) -> None:
        """A session the credential may not use does not exist, as far as it can tell."""
        if self.sessions is not None and session_id not in self.sessions:
            raise no_session(session_id)

    @property
    def who(self) -> str:
        """Who it is, for logs: never a secret."""
        if self.kind == "key":
            return f"key {self.key_id}"
        if self.kind == "token":
            return f"token sub={self.subject!r}"
        return self.kind


OPEN = Identity(tenant="", scopes=ALL_SCOPES, kind="open")
