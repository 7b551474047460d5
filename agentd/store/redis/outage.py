"""An outage of one Redis server, logged once when it starts and once when it ends.

While a shard is down every caller fails (each request, each job-queue reader, the
pub/sub reconnect loop), and logging each failure would bury the log in hundreds of
identical lines. Everything that finds the server unreachable reports to its one
:class:`Outage` instead: the first failure is logged, later ones are only counted, and
the first success after them logs the end with the count and the duration.
"""

from __future__ import annotations

import logging
import time

__all__ = ("Outage",)

log = logging.getLogger(__name__)


class Outage:
    """The state of one server: up, or down since a moment with a count of failures."""

    __slots__ = ("failures", "name", "since")

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: float | None = None  # monotonic time of the first failure
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException | str) -> None:
        """A call found the server unreachable; logged only if it starts an outage."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "%s unreachable: %s; its calls fail until it answers again",
                self.name,
                exc or type(exc).__name__,
            )

    def recovered(self) -> None:
        """A call succeeded; ends the outage, if there was one, with one line."""
        if self.since is None:
            return
        log.warning(
            "%s answers again after %.1fs; %d call(s) failed meanwhile",
            self.name,
            time.monotonic() - self.since,
            self.failures,
        )
        self.since = None
        self.failures = 0

    def replaced(self) -> None:
        """A cluster node in an outage no longer serves any slot (its replica took over):
        ends the outage with one line."""
        if self.since is None:
            return
        log.warning(
            "%s was replaced (its slots have another master) after %.1fs; "
            "%d call(s) failed meanwhile",
            self.name,
            time.monotonic() - self.since,
            self.failures,
        )
        self.since = None
        self.failures = 0
