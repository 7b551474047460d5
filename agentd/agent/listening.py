"""What a turn tells its listener of its admission: the caller's rate-limit headers once
the limits admit it, then the tools it may call."""

from __future__ import annotations

from ..auth import Ticket
from ..tools import ToolSet
from .types import Listener

__all__ = ("admitted", "admitted_now", "listed")


def admitted_now(ticket: Ticket, listener: Listener | None) -> bool:
    """:func:`admitted` without a coroutine when the admission is answered already (a
    request admitted on its worker's leases); False: await :func:`admitted`."""
    headers = ticket.answered()
    if headers is None:
        return False
    if listener is not None and headers:
        listener.limits(headers)
    return True


async def admitted(ticket: Ticket | None, listener: Listener | None) -> None:
    """Wait for the caller's limits to admit the turn, and tell the listener the headers."""
    if ticket is None:
        return
    headers = await ticket.admitted()
    if listener is not None and headers:
        listener.limits(headers)


async def listed(toolset: ToolSet | None, listener: Listener | None) -> None:
    """Tell the listener the turn's tools, once admitted (nothing for a turn without)."""
    if toolset is not None and listener is not None:
        await listener.tools_listed(toolset)
