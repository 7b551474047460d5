"""systemd's notify protocol (sd_notify), spoken by the supervisor only.

``NOTIFY_SOCKET`` names a unix datagram socket (``@`` means the abstract namespace).
The variables are removed from the environment once read so that workers, which must
not speak for the service, do not inherit them.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ("Notifier",)

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        path = os.environ.pop("NOTIFY_SOCKET", "")
        watchdog_usec = os.environ.pop("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.pop("WATCHDOG_PID", "")
        self._addr: str | None = None
        if path:
            self._addr = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval: float | None = None
        ours = not watchdog_pid or watchdog_pid == str(os.getpid())
        if ours and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            # Ping at half the deadline, as sd_watchdog_enabled(3) advises.
            self.watchdog_interval = int(watchdog_usec) / 2_000_000
        self._sock: socket.socket | None = None
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the supervisor: a reader that falls behind (the kernel queues
            # only net.unix.max_dgram_qlen datagrams, often 10) loses messages instead.
            self._sock.setblocking(False)
        self._next_ping = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except BlockingIOError:
            log.debug("sd_notify %s dropped: the notify socket is full", fields[0])
        except OSError as exc:  # systemd gone: never fatal
            log.warning("sd_notify %s failed: %s", fields[0], exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog_due(self, now: float) -> float | None:
        """Ping if due; return seconds until the next ping, or None without a watchdog."""
        if self.watchdog_interval is None:
            return None
        if now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.watchdog_interval
        return self._next_ping - now

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
