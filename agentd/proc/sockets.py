"""Listening sockets, owned by the supervisor for its whole life.

Linux drops the connections queued on a listening socket when the last process holding
it closes it. The supervisor therefore binds once and keeps its copies open; workers
inherit them across ``fork`` and only accept. With ``SO_REUSEPORT`` each worker slot gets
a socket of its own (the kernel spreads new connections evenly over them); without it
all slots share one socket.

``SO_REUSEPORT`` lets any process of the same user join a port, so before its first
bind the supervisor checks that nobody listens there yet: a plain bind (no
``SO_REUSEPORT``) fails on any listening socket, with or without the option. A reload
is a signal to the same supervisor, which keeps its sockets, so it never checks again.
"""

from __future__ import annotations

import errno
import socket

from ..config import parse_bind

__all__ = ("AddressInUse", "BindError", "Listeners", "reuse_port_supported")


class BindError(Exception):
    """The instance cannot listen on its address; the message says where and why."""


class AddressInUse(BindError):
    """Another process already listens on the address."""


def reuse_port_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"


def _address(host: str, port: int) -> tuple[int, int, int, tuple[object, ...]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    return family, kind, proto, addr


def _refuse(host: str, port: int, exc: OSError) -> BindError:
    where = _where(host, port)
    if exc.errno == errno.EADDRINUSE:
        return AddressInUse(
            f"cannot listen on {where}: address already in use (another process listens "
            "there; stop it or choose another server.bind)"
        )
    return BindError(f"cannot listen on {where}: {exc.strerror or exc}")


def _check_free(host: str, port: int) -> None:
    """Fail if any socket listens on the address, whatever its options.

    SO_REUSEADDR is set so that connections of a previous run still in TIME_WAIT do
    not count; it never lets a bind share a listening socket's address.
    """
    family, kind, proto, addr = _address(host, port)
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            raise _refuse(host, port, exc) from None


def _bind(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    family, kind, proto, addr = _address(host, port)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise _refuse(host, port, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


class Listeners:
    """The instance's listening sockets: one per worker slot, or one shared.

    The set only grows. When a reload lowers the worker count, the sockets of the lost
    slots stay open and are served by the remaining workers (socket ``i`` by slot
    ``i % workers``): closing a ``SO_REUSEPORT`` socket would reset the connections
    queued on it. Connections then spread unevenly over the workers until a restart.
    """

    def __init__(self, bind: str, backlog: int, reuse_port: bool) -> None:
        self.host, self.port = parse_bind(bind)
        self.backlog = backlog
        self.reuse_port = reuse_port and reuse_port_supported()
        self._socks: list[socket.socket] = []

    @property
    def address(self) -> tuple[str, int]:
        """The bound address; the real port when the config asked for port 0."""
        if not self._socks:
            raise RuntimeError("not bound")
        host, port = self._socks[0].getsockname()[:2]
        return host, port

    def ensure(self, slots: int) -> None:
        """Have a socket for each of ``slots`` slots (one in all without SO_REUSEPORT)."""
        want = slots if self.reuse_port else 1
        if not self._socks and self.port != 0:
            # Port 0 asks the kernel for a free port: nobody can be there yet.
            _check_free(self.host, self.port)
        while len(self._socks) < want:
            # Port 0 means "any free port": later sockets join the first one's port.
            port = self.address[1] if self._socks else self.port
            self._socks.append(_bind(self.host, port, self.backlog, self.reuse_port))

    def for_slot(self, slot: int, slots: int) -> list[socket.socket]:
        """The sockets that worker ``slot`` of ``slots`` accepts on."""
        return [s for i, s in enumerate(self._socks) if i % slots == slot]

    def all(self) -> list[socket.socket]:
        return list(self._socks)

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()
