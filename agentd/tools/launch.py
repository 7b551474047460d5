"""Start a stdio tool server so that it dies with the worker that started it.

    python launch.py PARENT_PID COMMAND [ARG ...]

A worker closes its tool servers when it stops, but a worker killed with SIGKILL runs
no code: here the kernel is asked (``PR_SET_PDEATHSIG``) to send SIGKILL to the server
when its parent exits, then the server's command replaces this process (same pid; the
request survives ``exec``). Elsewhere than Linux the command is only executed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: launch.py PARENT_PID COMMAND [ARG ...]")
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before the request was made: then nobody would kill us.
    if os.getppid() != parent:
        sys.exit(1)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.exit(f"agentd: cannot start the tool server {command[0]!r}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
