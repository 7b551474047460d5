"""Real load balancers in front of real instances, for tests/test_lb_nginx.py and
tests/test_lb_haproxy.py: the shipped configurations (deploy/nginx, deploy/haproxy)
rendered with the test's addresses, and three ``agentd serve`` instances on one Redis.
The load is tests/lb_load.py, the scenarios tests/lb_scenarios.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis

from agentd.store.keys import record_keys, turn_key

from .procs import ROOT, START_LIMIT, AgentdProcess, free_port, terminate
from .waiting import wait_until_sync

DEPLOY = ROOT / "deploy"
# The example instances of the shipped files: one line each, replaced by the test's.
EXAMPLE_ADDRESS = re.compile(r"10\.0\.0\.\d+:8080")

# server.drain_delay_s of the instances: above HAProxy's removal time (fall 2 x inter 1 s,
# plus one interval), as docs/deploy.md says to set it.
DRAIN_DELAY_S = 4.0

INSTANCE_CONFIG = """
[server]
workers = 1
shutdown_timeout = 10.0
drain_delay_s = {drain_delay_s}
turn_timeout = 30.0
[redis]
urls = ["{redis_url}"]
[jobs]
lease_s = 1.0
[[backends]]
name = "echo"
type = "echo"
tokens_per_s = 40.0
[[backends]]
name = "slow"
type = "echo"
tokens_per_s = 10.0
[[agents]]
name = "echo"
backend = "echo"
[[agents]]
name = "slow"
backend = "slow"
"""


def render_addresses(text: str, addresses: list[str]) -> str:
    """``text`` with its example instance lines replaced by one line per address (the
    first example line is the pattern; HAProxy's server names are numbered)."""
    lines = text.splitlines(keepends=True)
    examples = [i for i, line in enumerate(lines) if EXAMPLE_ADDRESS.search(line)]
    assert examples, "no example instance line to fill in"
    pattern = lines[examples[0]]
    mine = [
        re.sub(r"agentd\d+", f"agentd{n + 1}", EXAMPLE_ADDRESS.sub(address, pattern))
        for n, address in enumerate(addresses)
    ]
    kept = [line for i, line in enumerate(lines) if i not in examples[1:]]
    at = examples[0]
    return "".join(kept[:at] + mine + kept[at + 1 :])


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected one {old!r} in the shipped file"
    return text.replace(old, new)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


class Balancer:
    """A balancer process in front of the instances; ``url`` is where clients connect."""

    name = ""

    def __init__(self, workdir: Path, ports: list[int], session_hash: bool = False) -> None:
        self.dir = workdir / self.name
        self.dir.mkdir()
        self.port = free_port()
        self.log_path = self.dir / "out.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = self.write_config([f"127.0.0.1:{p}" for p in ports], session_hash)
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until_sync(self._up, START_LIMIT, f"{self.name} to listen")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, addresses: list[str], session_hash: bool) -> list[str]:
        raise NotImplementedError

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.log()}")
        return _listening(self.port)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.dir.glob("*.log"))

    def routes_to(self, port: int) -> bool:
        """Whether the balancer sends new requests to the instance on ``port`` (as far
        as it can say)."""
        return True

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


NGINX_MAIN = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 4096; }}
http {{
    log_format lb '$msec $request_method $request_uri $status '
                  'upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {dir}/access.log lb;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/agentd.conf;
}}
"""


def render_nginx(port: int, addresses: list[str], session_hash: bool = False) -> str:
    """deploy/nginx/agentd.conf with the test's addresses (and the optional hash on)."""
    text = (DEPLOY / "nginx" / "agentd.conf").read_text()
    text = _replace_once(text, "    listen 80;", f"    listen 127.0.0.1:{port};")
    if session_hash:
        text = _replace_once(text, "# hash $http_x_session_id", "hash $http_x_session_id")
    return render_addresses(text, addresses)


class Nginx(Balancer):
    """open-source nginx with deploy/nginx/agentd.conf included as shipped (but for the
    addresses) in a minimal main configuration of its own directory."""

    name = "nginx"

    def write_config(self, addresses: list[str], session_hash: bool) -> list[str]:
        (self.dir / "agentd.conf").write_text(render_nginx(self.port, addresses, session_hash))
        main = self.dir / "nginx.conf"
        main.write_text(NGINX_MAIN.format(dir=self.dir))
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        return [exe, "-p", str(self.dir), "-c", str(main), "-e", str(self.dir / "error.log")]


def render_haproxy(
    port: int, stats_port: int, addresses: list[str], session_hash: bool = False
) -> str:
    """deploy/haproxy/haproxy.cfg with the test's addresses (and the optional hash on)."""
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    text = _replace_once(text, "    bind :80\n", f"    bind 127.0.0.1:{port}\n")
    text = _replace_once(text, "bind 127.0.0.1:8404", f"bind 127.0.0.1:{stats_port}")
    if session_hash:
        for line in ("balance hdr(X-Session-Id)", "hash-type consistent"):
            text = _replace_once(text, f"    # {line}", f"    {line}")
    return render_addresses(text, addresses)


class HAProxy(Balancer):
    """HAProxy running deploy/haproxy/haproxy.cfg as shipped (but for the addresses)."""

    name = "haproxy"

    def write_config(self, addresses: list[str], session_hash: bool) -> list[str]:
        self.stats_port = free_port()
        self.addresses = addresses
        config = self.dir / "haproxy.cfg"
        config.write_text(render_haproxy(self.port, self.stats_port, addresses, session_hash))
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return [exe, "-db", "-f", str(config)]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def states(self) -> dict[str, str]:
        """Each server's address and its state (UP, DOWN, ...), from the stats page."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as reply:
            rows = csv.DictReader(io.StringIO(reply.read().decode().lstrip("# ")))
            names = {f"agentd{n + 1}": a for n, a in enumerate(self.addresses)}
            return {
                names[r["svname"]]: r["status"]
                for r in rows
                if r["pxname"] == "agentd" and r["svname"] in names
            }

    def routes_to(self, port: int) -> bool:
        return self.states().get(f"127.0.0.1:{port}", "").startswith("UP")


class Instances:
    """Three (or ``count``) ``agentd serve`` on one Redis, each on a port of its own
    that stays its own when it is started again."""

    def __init__(self, workdir: Path, redis_url: str, count: int = 3) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.config = INSTANCE_CONFIG.format(drain_delay_s=DRAIN_DELAY_S, redis_url=redis_url)
        self.ports = [free_port() for _ in range(count)]
        self.runs = 0
        self.procs = [self._spawn(port) for port in self.ports]
        for proc in self.procs:
            proc.wait_ready()

    def _spawn(self, port: int) -> AgentdProcess:
        self.runs += 1
        workdir = self.workdir / f"agentd-{port}-{self.runs}"
        workdir.mkdir()
        return AgentdProcess(workdir, self.config, [], {}, port=port)

    def start_again(self, index: int) -> AgentdProcess:
        self.procs[index] = proc = self._spawn(self.ports[index])
        proc.wait_ready()
        return proc

    def running_job(self, response_id: str) -> int | None:
        """The index of the instance whose worker runs (or ran) the job."""
        with redis.Redis.from_url(self.redis_url) as r:
            by = r.hget(record_keys(response_id)[0], "by")
        if by is None:
            return None
        pid = int(by.split(b":")[1])
        for i, proc in enumerate(self.procs):
            if proc.proc.poll() is None and pid in proc.worker_pids():
                return i
        return None

    def turn_held(self, sid: str) -> bool:
        """Whether a turn holds the session's lease."""
        with redis.Redis.from_url(self.redis_url) as r:
            return bool(r.exists(turn_key(sid)))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in self.workdir.glob("*/*.log"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.begin_stop()  # all drain at once: each waits its drain_delay_s first
        for proc in self.procs:
            proc.stop()


@contextlib.contextmanager
def behind(
    kind: type[Balancer], workdir: Path, redis_url: str, session_hash: bool = False
) -> Iterator[tuple[Instances, Balancer]]:
    """Three instances and the balancer in front of them; everything stopped after."""
    instances = Instances(workdir, redis_url)
    try:
        balancer = kind(workdir, instances.ports, session_hash)
        try:
            yield instances, balancer
        finally:
            balancer.stop()
    finally:
        instances.stop()


def kill(proc: AgentdProcess) -> None:
    """kill -9 the instance: the supervisor, then every worker, at once."""
    victims = [proc.pid, *proc.worker_pids()]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.proc.wait()
