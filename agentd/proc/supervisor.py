"""The supervisor: binds the listening sockets, forks the workers and keeps them serving.

It is a small state machine driven by one ``select`` loop, in gunicorn's manner:
signal handlers do nothing but wake the loop (``signal.set_wakeup_fd`` writes the signal
number into a pipe), and the loop reads them and acts — ``start``, ``reload``, ``stop``,
``reap_workers``, ``manage_workers``. It never runs an event loop of its own, so
forking from it is safe.

Reloads keep every connection: the listening sockets stay open in the supervisor, a
new-generation worker starts accepting on its slot's socket, and only then is the old
worker of that slot told to drain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import metrics as metrics_mod
from ..config import Config, ConfigError, is_loopback
from ..log import setup_logging
from ..runtime import WorkerInfo, instance_id
from ..server import check_startup, preload
from . import heap
from . import worker as worker_mod
from .banner import describe
from .notify import Notifier
from .sockets import BindError, Listeners

__all__ = ("Supervisor",)

log = logging.getLogger(__name__)

# A worker that dies sooner than this after becoming ready counts as a crash loop.
STABLE_AFTER = 10.0
MAX_BACKOFF = 10.0
# How long a new worker may take to accept (plugins may do slow set-up).
START_TIMEOUT = 60.0
# Extra time past shutdown_timeout before a draining worker is killed.
KILL_GRACE = 5.0
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)


@dataclass(eq=False)
class Worker:
    """The supervisor's view of one worker process."""

    slot: int
    generation: int
    pid: int
    fd: int  # read end of the worker's pipe
    started: float
    ready_at: float | None = None
    last_seen: float = 0.0
    kill_at: float | None = None  # set once told to drain
    accepting: bool = True  # until the worker says it stopped accepting (or exits)

    @property
    def draining(self) -> bool:
        return self.kill_at is not None


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    def __init__(self, config: Config, load_config: Callable[[], Config]) -> None:
        self.config = config
        self._load_config = load_config
        self.generation = 0
        # The instance's id in the service registry, the same for every generation.
        self.instance = instance_id(config.server.instance_id, config.server.bind)
        self.workers: dict[int, Worker] = {}  # by pid
        self.listeners = Listeners(
            config.server.bind, config.server.backlog, config.server.reuse_port
        )
        self.notifier = Notifier()
        self._stopping = False
        self._stop_deadline = 0.0
        # When a stop that waits server.drain_delay_s (readiness failing) starts draining.
        self._leave_until: float | None = None
        # Set while a generation is starting: what to go back to if it cannot start.
        self._previous: tuple[Config, int] | None = None
        self._announced = 0  # the generation last reported ready
        self._exit_code = 0
        self._restart_at: dict[int, float] = {}  # slot -> when to respawn
        self._failures: dict[int, int] = {}  # slot -> consecutive early deaths
        self._wakeup_r = self._wakeup_w = -1
        self._metrics_dir = ""
        self._metrics: metrics_mod.SupervisorMetrics | None = None

    # -- the operator's verbs ------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the process exit code."""
        self._metrics_dir = metrics_mod.enable_multiprocess()
        self._metrics = metrics_mod.SupervisorMetrics()
        self._install_signals()
        try:
            try:
                self.start()
            except BindError as exc:
                log.error("%s", exc)
                return 1
            return self._loop()
        finally:
            self.listeners.close()
            self.notifier.close()
            metrics_mod.remove_directory(self._metrics_dir)

    def start(self) -> None:
        """Bind and start the first workers; ``ConfigError`` (before binding) for a
        configuration no worker could start with."""
        check_startup(self.config)
        self.listeners.ensure(self.config.server.workers)
        host, port = self.listeners.address
        log.info(
            "agentd listening on %s:%d with %d worker(s) (%s mode, %s)",
            host,
            port,
            self.config.server.workers,
            self.config.mode,
            "SO_REUSEPORT socket per worker" if self.listeners.reuse_port else "one shared socket",
        )
        for line in describe(self.config, host, port):
            log.info("%s", line)
        if self.config.mode == "standalone":
            log.warning(
                "standalone mode: sessions and state live in the worker's memory and are "
                "lost when the worker restarts or reloads; configure [redis] urls to keep them"
            )
        if self.config.auth.mode == "none":
            log.warning(
                'auth: OPEN (auth.mode = "none"): anyone who reaches %s:%d can read and '
                "write every session, document and response%s",
                host,
                port,
                "" if is_loopback(host) else " (auth.allow_open = true: on purpose)",
            )
        self._start_generation()

    def reload(self) -> None:
        """Re-read the config and replace every worker, losing no connection."""
        try:
            new = self._load_config()
            check_startup(new)
        except ConfigError as exc:
            log.error("reload refused, old workers keep serving: %s", "; ".join(exc.errors))
            self._count_reload("refused")
            return
        self.notifier.reloading()
        fixed = ("bind", "backlog", "reuse_port")
        changed = [k for k in fixed if getattr(new.server, k) != getattr(self.config.server, k)]
        if changed:
            log.warning(
                "server.%s change(s) take effect at restart, not reload", ", ".join(changed)
            )
            new = dataclasses.replace(
                new,
                server=dataclasses.replace(
                    new.server, **{k: getattr(self.config.server, k) for k in fixed}
                ),
            )
        if new.redis.urls != self.config.redis.urls:
            # Each new worker serves the new list for its whole life (see "Adding a shard"
            # in docs/operations.md); the old generation drains on the old one.
            log.info("reload: [redis] urls changed to %d server(s)", len(new.redis.urls))
        if self._previous is None:
            self._previous = (self.config, self.generation)
        self.config = new
        setup_logging(new.log.level, new.log.format, "main")
        if new.server.workers < self.config.server.workers and self.listeners.reuse_port:
            log.warning(
                "worker count lowered to %d: the %d listening sockets stay open (closing one "
                "would reset its queued connections), so connections spread unevenly until "
                "a restart",
                new.server.workers,
                len(self.listeners.all()),
            )
        self.listeners.ensure(new.server.workers)
        log.info("reloading: starting generation %d", self.generation + 1)
        self._start_generation()

    def leave(self, now: float) -> bool:
        """Begin a stop with ``server.drain_delay_s``: every worker fails /readyz but keeps
        serving until the delay ends, so load balancers stop sending before the drain.
        Return whether the delay runs (false when none is configured or it already ran)."""
        delay = self.config.server.drain_delay_s
        if delay <= 0 or self._stopping or self._leave_until is not None:
            return False
        self._leave_until = now + delay
        self.notifier.stopping()
        log.info("stopping: /readyz fails from now on; draining in %.1fs", delay)
        for w in self.workers.values():
            self._tell_leaving(w)
        return True

    def stop(self, *, force: bool = False) -> None:
        """Drain every worker (or kill them at once with ``force``), then exit."""
        now = time.monotonic()
        if not self._stopping:
            self._stopping = True
            if self._leave_until is None:
                self.notifier.stopping()
            log.info("stopping: draining %d worker(s)", len(self.workers))
            self._stop_deadline = now + self.config.server.shutdown_timeout + KILL_GRACE
            for w in self.workers.values():
                self._drain(w, now)
            # Workers hold their own copies until they have stopped accepting; once
            # they let go, new connections are refused instead of left waiting.
            self.listeners.close()
        if force:
            log.warning("stopping now: killing %d worker(s)", len(self.workers))
            for w in self.workers.values():
                self._kill(w, signal.SIGKILL)

    # -- workers -------------------------------------------------------------------

    def _start_generation(self) -> None:
        self.generation += 1
        self.spawn_workers(range(self.config.server.workers))

    def spawn_workers(self, slots: Iterable[int]) -> None:
        # What every worker would import, and collect, on its own is done here once.
        try:
            preload(self.config)
        except Exception:  # a broken install: each worker fails to start and says why
            log.exception("could not import what the workers need")
        with heap.inherited():
            for slot in slots:
                self.spawn_worker(slot)
        # That may take seconds (a reload's config that newly needs the MCP SDK): read
        # the heartbeats the serving workers sent meanwhile, lest they look stuck.
        now = time.monotonic()
        for w in list(self.workers.values()):
            self._read_worker(w, now)

    def spawn_worker(self, slot: int) -> None:
        socks = self.listeners.for_slot(slot, self.config.server.workers)
        info = WorkerInfo(id=slot, generation=self.generation, instance=self.instance)
        keep = {sock.fileno() for sock in socks}
        inherited = [s.fileno() for s in self.listeners.all()] + [
            w.fd for w in self.workers.values()
        ]
        inherited += [self._wakeup_r, self._wakeup_w]
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read_fd)
            for fd in inherited:
                if fd not in keep and fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.notifier.close()
            worker_mod.run(dataclasses.replace(info, pid=os.getpid()), socks, self.config, write_fd)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        now = time.monotonic()
        self.workers[pid] = Worker(slot, self.generation, pid, read_fd, started=now, last_seen=now)
        log.debug("spawned worker %d (pid %d, generation %d)", slot, pid, self.generation)

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            os.close(w.fd)
            metrics_mod.process_exited(pid)
            self._worker_exited(w, status)

    def _worker_exited(self, w: Worker, status: int) -> None:
        how = _describe_exit(status)
        if w.draining or self._stopping:
            log.info("worker %d (pid %d) stopped: %s", w.slot, w.pid, how)
            return
        now = time.monotonic()
        if w.generation != self.generation:
            log.warning("retired worker %d (pid %d) exited early: %s", w.slot, w.pid, how)
            return
        if w.ready_at is None and self._announced != self.generation:
            self._generation_failed(w, how)
            return
        stable = w.ready_at is not None and now - w.ready_at >= STABLE_AFTER
        failures = 0 if stable else self._failures.get(w.slot, 0) + 1
        self._failures[w.slot] = failures
        delay = min(MAX_BACKOFF, 0.1 * 2 ** max(0, failures - 1)) if failures else 0.1
        log.error(
            "worker %d (pid %d) exited unexpectedly: %s; restarting in %.1fs",
            w.slot,
            w.pid,
            how,
            delay,
        )
        assert self._metrics is not None
        self._metrics.worker_restarts.labels("signal" if os.WIFSIGNALED(status) else "exit").inc()
        self._restart_at[w.slot] = now + delay

    def _generation_failed(self, w: Worker, how: str) -> None:
        """A worker of a starting generation died before serving: give that generation up."""
        if self._previous is None:  # the very first start: nothing to fall back on
            log.error("worker %d failed to start (%s); stopping", w.slot, how)
            self._exit_code = 1
            self.stop()
            return
        old_config, old_generation = self._previous
        log.error(
            "reload failed: worker %d of generation %d died before serving (%s); "
            "generation %d keeps serving",
            w.slot,
            self.generation,
            how,
            old_generation,
        )
        now = time.monotonic()
        for other in self.workers.values():
            if other.generation == self.generation:
                self._drain(other, now)
        self.config, self.generation = old_config, old_generation
        self._previous = None
        self._count_reload("failed")
        self.notifier.ready(self._status())

    def manage_workers(self) -> None:
        now = time.monotonic()
        timeout = self.config.server.heartbeat_timeout
        for w in list(self.workers.values()):
            if w.draining:
                if w.kill_at is not None and now >= w.kill_at:
                    log.warning("worker %d (pid %d) did not drain in time; killing", w.slot, w.pid)
                    self._kill(w, signal.SIGKILL)
                    w.kill_at = float("inf")
            elif w.ready_at is None:
                if now - w.started > START_TIMEOUT:
                    log.error("worker %d (pid %d) did not start in %.0fs; killing",
                              w.slot, w.pid, START_TIMEOUT)  # fmt: skip
                    self._kill(w, signal.SIGKILL)
            elif now - w.last_seen > timeout:
                log.error("worker %d (pid %d) unresponsive for %.0fs; killing",
                          w.slot, w.pid, timeout)  # fmt: skip
                self._kill(w, signal.SIGKILL)
        if self._stopping:
            return
        due = [slot for slot, when in self._restart_at.items() if now >= when]
        for slot in due:
            del self._restart_at[slot]
        restart = [slot for slot in due if slot < self.config.server.workers]
        if restart:
            self.spawn_workers(restart)
        self._retire_old_workers(now)

    def _retire_old_workers(self, now: float) -> None:
        current = {w.slot: w for w in self.workers.values() if w.generation == self.generation}
        all_ready = len(current) == self.config.server.workers and all(
            w.ready_at is not None for w in current.values()
        )
        for w in list(self.workers.values()):
            if w.generation == self.generation or w.draining:
                continue
            successor = current.get(w.slot)
            if all_ready or (successor is not None and successor.ready_at is not None):
                self._drain(w, now)
        if all_ready and self._announced != self.generation:
            # An old worker accepts on its slot's socket until it has handled SIGTERM.
            old_accepting = any(
                w.accepting for w in self.workers.values() if w.generation != self.generation
            )
            if not old_accepting:
                self._generation_ready()

    def _generation_ready(self) -> None:
        if self._previous is not None:
            self._count_reload("ok")
            log.info("reload complete: generation %d serving", self.generation)
        else:
            log.info("ready: %s", self._status())
        self._previous = None
        self._announced = self.generation
        assert self._metrics is not None
        self._metrics.workers.set(self.config.server.workers)
        self.notifier.ready(self._status())

    # -- plumbing -------------------------------------------------------------------

    def _status(self) -> str:
        return f"serving with {self.config.server.workers} worker(s), generation {self.generation}"

    def _tell_leaving(self, w: Worker) -> None:
        # Only a ready worker has its SIGUSR1 handler; one that becomes ready later is
        # told then (``_read_worker``).
        if w.ready_at is not None and not w.draining:
            self._kill(w, signal.SIGUSR1)

    def _drain(self, w: Worker, now: float) -> None:
        if not w.draining:
            w.kill_at = now + self.config.server.shutdown_timeout + KILL_GRACE
            self._kill(w, signal.SIGTERM)

    @staticmethod
    def _kill(w: Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, sig)

    def _count_reload(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.reloads.labels(result).inc()

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe()
        for fd in (self._wakeup_r, self._wakeup_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            # The handler only has to exist: the wakeup fd carries the signal number.
            signal.signal(sig, lambda signum, frame: None)
        # Workers inherit this until they handle it: SIGUSR1 ("fail /readyz") is never fatal.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def _read_signals(self) -> list[int]:
        try:
            data = os.read(self._wakeup_r, 1024)
        except BlockingIOError:
            return []
        return list(data)

    def _read_worker(self, w: Worker, now: float) -> None:
        try:
            data = os.read(w.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return
        if not data:
            return
        w.last_seen = now
        if worker_mod.NOT_ACCEPTING in data:
            w.accepting = False
        if worker_mod.READY in data and w.ready_at is None:
            w.ready_at = now
            log.debug("worker %d (pid %d) ready", w.slot, w.pid)
            if self._leave_until is not None:
                self._tell_leaving(w)

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            if self._stopping or self._leave_until is not None:
                return
            log.info("SIGHUP: reloading configuration")
            self.reload()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            # The first one waits drain_delay_s if set; another one drains at once.
            if not self.leave(time.monotonic()):
                self.stop(force=self._stopping and signum == signal.SIGINT)
        elif signum == signal.SIGQUIT:
            self.stop(force=True)

    def _next_timeout(self, now: float) -> float:
        timeout = 1.0
        if self._restart_at:
            timeout = min(timeout, max(0.0, min(self._restart_at.values()) - now))
        if self._leave_until is not None and not self._stopping:
            timeout = min(timeout, max(0.0, self._leave_until - now))
        watchdog = self.notifier.watchdog_due(now)
        if watchdog is not None:
            timeout = min(timeout, watchdog)
        return timeout

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            fds = [self._wakeup_r] + [w.fd for w in self.workers.values()]
            try:
                readable, _, _ = select.select(fds, [], [], self._next_timeout(now))
            except InterruptedError:
                readable = []
            now = time.monotonic()
            by_fd = {w.fd: w for w in self.workers.values()}
            for fd in readable:
                if fd == self._wakeup_r:
                    for signum in self._read_signals():
                        self._handle_signal(signum)
                elif (w := by_fd.get(fd)) is not None:
                    self._read_worker(w, now)
            self.reap_workers()
            self.manage_workers()
            if self._leave_until is not None and not self._stopping and now >= self._leave_until:
                self.stop()
            if self._stopping:
                if not self.workers:
                    log.info("all workers stopped; bye")
                    return self._exit_code
                if now >= self._stop_deadline:
                    for w in self.workers.values():
                        self._kill(w, signal.SIGKILL)
