"""The progress line: what runs now, how long the run has taken, and about how long is left."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ("Progress", "clock")


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class Progress:
    """Estimated time left = the estimates of the scenarios not started + what is left of
    the current one's (never below zero). Rewrites one line on a terminal, else prints
    one line per step."""

    def __init__(self, estimates: dict[str, float], stream: TextIO | None = None) -> None:
        self.estimates = dict(estimates)
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.current = ""
        self.current_started = self.started
        self.done: list[str] = []
        self.runs = 0

    def left(self) -> float:
        pending = sum(
            v for k, v in self.estimates.items() if k not in self.done and k != self.current
        )
        current = self.estimates.get(self.current, 0.0)
        return pending + max(0.0, current - (time.monotonic() - self.current_started))

    def begin(self, name: str) -> None:
        self.current, self.current_started = name, time.monotonic()
        self.runs = 0
        self._show("starting")

    def tick(self) -> None:
        self.runs += 1
        self._show(f"{self.runs} measurement(s) done")

    def end(self, name: str, status: str) -> None:
        self.done.append(name)
        self._show(status, final=True)
        self.current = ""

    def _show(self, what: str, final: bool = False) -> None:
        index = len(self.done) + (0 if final else 1)
        line = (
            f"[{index}/{len(self.estimates)}] {self.current or 'done'}: {what} | "
            f"elapsed {clock(time.monotonic() - self.started)}, about "
            f"{clock(self.left())} left"
        )
        if self.stream.isatty():
            end = "\n" if final else ""
            self.stream.write(f"\r\033[K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
