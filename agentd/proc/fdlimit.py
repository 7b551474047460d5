"""The open-file limit: one descriptor per client connection (tens of thousands of idle
WebSockets per worker), so ``agentd serve`` raises its soft limit to the hard one, as
systemd's ``LimitNOFILE`` would; the workers inherit it. A shell's usual soft limit
(1024) would otherwise cap a worker near a thousand connections."""

from __future__ import annotations

import logging
import resource

__all__ = ("raise_nofile",)

log = logging.getLogger(__name__)


def raise_nofile() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # a sandbox may refuse: serve with what there is
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard
