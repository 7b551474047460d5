"""The base every store implementation extends: the shared logic of each concern
(:mod:`.sessions`, :mod:`.turns`, :mod:`.watch`, :mod:`.state`) over primitives that the
memory (:mod:`.memory`) and Redis (:mod:`.redis`) stores implement atomically, and the
tenants' views of the store."""

from __future__ import annotations

import abc
import copy
from collections import OrderedDict

from ..config import TENANT_RE, Config
from .limits import Limits
from .state import StateStore
from .turns import TurnStore
from .watch import WatchStore

__all__ = ("MAX_VIEWS", "BaseStore")

# Tenant views kept per worker (the least recently used beyond are made again on use).
MAX_VIEWS = 1024


class BaseStore(WatchStore, TurnStore, StateStore):
    """A :class:`~agentd.store.api.Store` once the primitives are implemented."""

    # Rate limits, quotas and usage counters (the contract is agentd.store.limits, kept
    # out of the interfaces module, which imports nothing of the store).
    limits: Limits

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ttl = config.sessions.ttl
        self.max_messages = config.sessions.max_messages
        self.max_message_bytes = config.sessions.max_message_bytes
        self.max_value_bytes = config.state.max_value_bytes
        self.tenant = ""
        self._root = self
        self._views: OrderedDict[str, BaseStore] = OrderedDict()
        self._watched = {}  # the sessions watched here, one subscription each (.watch)
        self._closing = set()

    def for_tenant(self, tenant: str) -> BaseStore:
        if tenant == self.tenant:
            return self
        root = self._root
        if not tenant:
            return root
        views = root._views
        view = views.get(tenant)
        if view is not None:
            views.move_to_end(tenant)
            return view
        if not TENANT_RE.fullmatch(tenant):
            raise ValueError(f"{tenant!r} is not a tenant name")
        # A shallow copy shares the connections, hub, index writer and background tasks.
        view = copy.copy(root)
        view.tenant = tenant
        view._scope(tenant)
        views[tenant] = view
        if len(views) > MAX_VIEWS:
            views.popitem(last=False)
        return view

    @abc.abstractmethod
    def _scope(self, tenant: str) -> None:
        """Turn this fresh copy of the root store into ``tenant``'s view."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def readiness(self) -> str | None:
        return None
