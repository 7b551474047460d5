"""Admin actions as audit lines: one line per action on the ``agentd.audit`` logger, with
who asked, the action, the object it touched and how it ended (ok, refused with its error
code, or failed), written as the action ends whatever happens."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import AgentdError
from .auth import identity_of

__all__ = ("Handler", "audited")

log = logging.getLogger("agentd.audit")

# A handler that fills in the facts of the line (ids, tenant, ...) as it learns them.
Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.Response]]
Facts = Callable[[web.Request], dict[str, str]]
Describe = Callable[[dict[str, str]], str]


def audited(
    action: str, handler: Handler, facts: Facts, describe: Describe
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Run ``handler`` with the request's first ``facts`` and write one audit line of
    what it did, or why it refused; ``describe`` renders the facts for the line."""

    async def run(request: web.Request) -> web.Response:
        known = facts(request)
        who = identity_of(request).who

        def write(outcome: str) -> None:
            log.info(
                "%s %s %s: %s", who, action, describe(known), outcome,
                extra={"who": who, "action": action, **known, "outcome": outcome},
            )  # fmt: skip

        try:
            response = await handler(request, known)
        except AgentdError as exc:
            write(f"refused: {exc.code}")
            raise
        except Exception:
            write("failed")
            raise
        write("ok")
        return response

    return run
