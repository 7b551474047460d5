"""Agents and their turns: the registry of configured agents, admission of interactive
turns, the session lease a turn holds, and the turn itself (:mod:`.turn`)."""

from __future__ import annotations

from .admission import Admission, PeopleSignal
from .lease import Interrupt
from .turn import Agents
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
    "RecordedStep",
    "Timings",
    "TurnRequest",
    "TurnResult",
    "new_turn_id",
)
