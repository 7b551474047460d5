"""Agents and their turns: the registry of configured agents, admission of interactive
turns, the session lease a turn holds, and the turn itself (:mod:`.turn`, its reply
:mod:`.reply`)."""

from __future__ import annotations

# The tool types of its interface (TurnRequest.tool_servers, Listener, Agents.tools),
# for the parts above it that know no tools of their own.
from ..tools import ToolResult, Tools, ToolServer, ToolSet
from .admission import Admission, PeopleSignal
from .lease import Interrupt
from .turn import Agents, Prepared
from .types import (
    Checkpoint,
    Listener,
    RecordedStep,
    Timings,
    TurnRequest,
    TurnResult,
    new_turn_id,
)

__all__ = (
    "Admission",
    "Agents",
    "Checkpoint",
    "Interrupt",
    "Listener",
    "PeopleSignal",
    "Prepared",
    "RecordedStep",
    "Timings",
    "ToolResult",
    "ToolServer",
    "ToolSet",
    "Tools",
    "TurnRequest",
    "TurnResult",
    "new_turn_id",
)
