"""Peer scenarios: agentd against another server doing the same job, in the same run.

``peer-litellm``: the cache-hit chat completion through LiteLLM's proxy (from PyPI, in its
own virtualenv, response cache on) and through agentd, one worker each on the server CPU,
both with the same model at the same OpenAI-compatible upstream stub.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from .. import peers, targets
from ..measure import Bench, Served
from .common import HIT_CHAT, Scenario, compare
from .http import _warm_cache

__all__ = ("PEER_LITELLM",)

PATH = "/v1/chat/completions"
MIN_WINDOW = 6.0  # seconds
MAX_WINDOW = 60.0
ROUNDS = 10


def upstream_calls(up: Served) -> int:
    """Completions the upstream stub has answered so far."""
    with urllib.request.urlopen(up.target.url("/stats"), timeout=10) as response:
        return int(json.loads(response.read())["completions"])


def _post(url: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url + PATH, data=HIT_CHAT.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def _litellm_hit(served: Served, up: Served) -> dict[str, Any]:
    """Send the request twice; the second must be answered without the upstream (LiteLLM
    then also names its cache key in ``x-litellm-cache-key``)."""
    url = served.target.url()
    first = _post(url)
    before = upstream_calls(up)
    status, headers, body = _post(url)
    after = upstream_calls(up)
    reply = json.loads(body)["choices"][0]["message"]["content"]
    hit = status == 200 and after == before
    if not hit:
        raise RuntimeError(
            f"LiteLLM's repeated request reached the upstream ({after - before} call(s)); "
            "its cache is not answering, so this would not be a cache-hit comparison"
        )
    return {
        "first_status": first[0],
        "second_status": status,
        "reply": reply,
        "upstream_calls_on_repeat": after - before,
        "cache_key_header": "x-litellm-cache-key" in headers,
    }


def window(bench: Bench, concurrency: int = 1, seconds_per_request: float = 0.0) -> float:
    """The measured window: at least ``MIN_WINDOW`` s (but for tiny runs), and at least
    ``ROUNDS`` times what ``concurrency`` requests take one after the other
    (``seconds_per_request``, from the run at one connection), up to ``MAX_WINDOW``.

    A server that interleaves its requests answers a fresh load's first ``concurrency``
    requests together, one round later: LiteLLM takes tens of milliseconds of CPU per
    request, so at 64 connections a round lasts seconds on a shared core, and a short
    window would count a round or two, not a rate (its CPU would be spread over the few
    requests that ended inside it)."""
    s = bench.settings
    if s.mode == "tiny":
        return s.duration
    return min(MAX_WINDOW, max(s.duration, MIN_WINDOW, ROUNDS * concurrency * seconds_per_request))


def _load(bench: Bench, served: Served, up: Served, concurrencies: list[int]) -> dict[str, Any]:
    """The request at each concurrency (one connection first); the window each load had
    and the upstream calls it made (warm-up too)."""
    out: dict[str, Any] = {"window_s": {}, "upstream_calls": {}}
    per_request = 0.0
    for c in concurrencies:
        seconds = window(bench, c, per_request)
        before = upstream_calls(up)
        run = bench.http(served, PATH, method="POST", body=HIT_CHAT, concurrency=c, seconds=seconds)
        out["upstream_calls"][c] = upstream_calls(up) - before
        out["window_s"][c] = round(seconds, 1)
        if not run.get("requests"):
            raise RuntimeError(
                f"{served.target.name} completed no request in the {seconds:g} s window "
                f"at {c} connections: no figure to compare"
            )
        if c == 1:
            per_request = 1.0 / run["rps"]
    return out


def run_peer_litellm(bench: Bench) -> None:
    s, record = bench.settings, bench.record
    venv = peers.peers_dir() / "litellm"
    peer = peers.ensure_litellm(venv, peers.install_allowed())
    if peer.exe is None:
        record["status"] = "skipped"
        record["reason"] = f"not run: {peer.problem}"
        return
    load = os.getloadavg()
    concurrencies = sorted({1, s.main_concurrency})
    figures: dict[str, Any] = {
        "litellm": {
            "version": peer.version,
            "venv": str(venv),
            "installed_in_this_run": peer.installed_now,
            "cache": "local (in-memory)",
            "workers": 1,
        },
        "loadavg_at_start": [round(x, 2) for x in load],
        "loads": {},
    }
    record["figures"] = figures
    record["notes"].append(
        f"LiteLLM {peer.version} ({peers.LITELLM_SPEC} from PyPI, in {venv}) with its response "
        "cache on, type local (in memory: one worker's own cache, no round trip, the fastest "
        "LiteLLM offers for one worker; its docs keep Redis for more than one), 1 worker "
        "(--num_workers 1), no database, no master key, telemetry off; against agentd with 1 "
        "worker (in-memory store, auth off, its response cache: the request has temperature "
        f"0). Both on CPU {s.server_cpus or '-'}, the same model 'echo' at the same upstream "
        f"stub (bench/baselines/upstream.py, on the load CPUs {s.load_cpus}); the same "
        f"request and load generator for both, each load after a {s.warmup:g} s warm-up, its "
        f"window at least {window(bench):g} s and {ROUNDS} times what its connections' "
        f"requests take one after the other (up to {MAX_WINDOW:g} s; figures.loads.*.window_s)."
        " The upstream's calls during each load (figures.loads.*.upstream_calls) show whether "
        "a server reached it: 0 is cache hits only."
    )
    with bench.serve(targets.upstream(bench.workdir, s.load_cpus)) as up:
        v1 = up.target.url("/v1")
        cm = targets.agentd(bench.workdir, s.server_cpus, upstream_url=v1)
        with bench.serve(cm, side_pids=up.target.pids()) as served:
            states, _ = _warm_cache(served.target.url(), 1)
            figures["agentd_x_cache"] = " > ".join(states)
            if states[-1] != "hit-l1":
                raise RuntimeError(f"agentd's repeated request was not an L1 hit: {states}")
            figures["loads"]["agentd"] = _load(bench, served, up, concurrencies)
        cm = peers.litellm(bench.workdir, s.server_cpus, peer.exe, v1)
        with bench.serve(cm, side_pids=up.target.pids()) as served:
            figures["litellm"]["hit_check"] = _litellm_hit(served, up)
            figures["loads"]["litellm"] = _load(bench, served, up, concurrencies)
    compare(bench, baselines=("litellm",))
    at_main = {r["metric"]: r for r in record["ratios"] if r["concurrency"] == s.main_concurrency}
    rps, cpu = at_main.get("rps") or {}, at_main.get("server_cpu_s_per_1k") or {}
    figures["agentd_over_litellm_rps"] = rps.get("ratio")
    figures["litellm_cpu_per_request_over_agentd"] = (
        round(cpu["baseline_value"] / cpu["value"], 2)
        if cpu.get("value") and cpu.get("baseline_value")
        else None
    )
    figures["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]


PEER_LITELLM = Scenario(
    "peer-litellm",
    "only when named: the cache-hit chat completion through LiteLLM's proxy (pip "
    "'litellm[proxy]' in .bench-peers/litellm, its in-memory cache on, 1 worker) vs "
    "agentd (1 worker, its response cache), same upstream stub, same request and load",
    run_peer_litellm,
    lambda s: 3 * (max(s.duration, MIN_WINDOW) + s.warmup + 0.4) + MAX_WINDOW + 60.0,
    default=False,
)
