"""The configured agents, by name."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import AgentConfig
from ..errors import NotFound

__all__ = ("Registry",)


class Registry:
    def __init__(self, agents: Sequence[AgentConfig]) -> None:
        self._agents = {a.name: a for a in agents}

    def get(self, name: str) -> AgentConfig:
        """The agent called ``name``; 404 ``model_not_found`` if there is none (the
        OpenAI APIs name an agent in their ``model`` field)."""
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"no agent named {name!r}", code="model_not_found")
        return agent

    def all(self) -> list[AgentConfig]:
        return list(self._agents.values())
