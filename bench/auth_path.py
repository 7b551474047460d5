"""The CPU a request's identity and limits cost a worker, measured in process.

    .venv/bin/python -m bench.auth_path [--requests 64000] [--repeat 5] [--json]
                                        [--agentd-root PATH]

Starts a throw-away redis-server on a free loopback port and, in this process, the parts
a worker runs for every ``/v1`` request with ``auth.mode = "keys"``: the credential read
from the ``Authorization`` header, the key found (:meth:`agentd.auth.Auth.known`, else
:meth:`~agentd.auth.Auth.identify`), the scope checked, the limiter's ticket begun,
admitted and settled as a cache hit, and its ``x-ratelimit-*`` headers merged into the
reply's. The key and its tenant have the limits of ``http-chat-auth`` (large enough to be
leased), and the requests come 64 per event-loop tick. Reported: the process CPU per
request (the best of ``--repeat`` runs of ``--requests``, less the cost of the same
ticks with nothing in them), and how many requests the worker's leases admitted.

Unlike ``http-chat-auth``, nothing else runs in the measured loop (no HTTP, no turn), so
the figure is the limiter's and the key cache's own cost, and it moves far less with the
machine's load than ``http-chat-auth``'s ratios; ``--agentd-root`` measures the agentd of
another checkout (as ``python -m bench`` does), to compare two in the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import uvloop
from aiohttp.test_utils import make_mocked_request

PER_TICK = 64


async def measure(requests: int, repeat: int, redis_url: str) -> dict[str, object]:
    # Imported here: after --agentd-root put the checkout under test first.
    from agentd.auth import Auth, Limiter
    from agentd.auth.keys import new_key
    from agentd.config import from_dict
    from agentd.server.auth import credential_of, scope_for
    from agentd.store import KeyRecord, open_store

    from .scenarios.auth import KEY_LIMITS

    # http-chat-auth's limits: the key's, and the tenant's with the day and month too.
    budgets = {"tokens_per_day": 10**15, "tokens_per_month": 10**15}
    tenant_limits = {**KEY_LIMITS, **budgets}
    config = from_dict(
        {"redis": {"urls": [redis_url]}, "auth": {"mode": "keys", "tenant_limits": tenant_limits}}
    )
    store = open_store(config)
    await store.start()
    auth = Auth(config, store)
    await auth.start()
    limiter = Limiter(config, store.limits, None, auth.keys)
    made = new_key()
    record = KeyRecord(made.id, "bench", made.secret_hash, scopes=("chat",), limits=KEY_LIMITS)
    await store.keyring.create(record)
    request = make_mocked_request(
        "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {made.key}"}
    )
    counts = [0, 0]  # requests, admitted on a lease
    known = getattr(auth, "known", None)

    async def one() -> Mapping[str, str]:
        scope = scope_for(request.path)
        credential = credential_of(request)
        # A checkout from before Auth.known: identify alone.
        identity = known(credential) if known is not None else None
        if identity is None:
            identity = await auth.identify(credential)
        if scope:
            identity.require(scope)
        headers = {"X-Cache": "hit-l1"}
        ticket = limiter.begin(identity)
        if ticket is not None:
            await ticket.admitted()
            counts[0] += 1
            counts[1] += ticket.leased is not None
            ticket.settle(None, "hit-l1")
            headers.update(ticket.headers)
        return headers

    async def nothing() -> None:
        return None

    async def ticks(make: object, n: int) -> float:
        started = time.process_time()
        for _ in range(n // PER_TICK):
            await asyncio.gather(*(make() for _ in range(PER_TICK)))  # type: ignore[operator]
        return time.process_time() - started

    try:
        await ticks(one, max(requests // 4, PER_TICK))  # the leases granted, the key verified
        counts[:] = [0, 0]
        empty = min([await ticks(nothing, requests) for _ in range(repeat)])
        best = min([await ticks(one, requests) for _ in range(repeat)])
        headers = await one()
    finally:
        await limiter.close()
        await auth.close()
        await store.close()
    return {
        "agentd": str(Path(sys.modules["agentd"].__file__ or "").parent),
        "requests": requests,
        "repeat": repeat,
        "us_per_request": round((best - empty) / requests * 1e6, 2),
        "tick_us_per_request": round(empty / requests * 1e6, 2),
        "leased_share": round(counts[1] / max(counts[0], 1), 4),
        "headers": dict(headers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_path", description=__doc__)
    parser.add_argument("--requests", type=int, default=64_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--agentd-root", type=Path, help="measure another checkout's agentd")
    args = parser.parse_args()
    if args.agentd_root is not None:
        sys.path.insert(0, str(args.agentd_root.resolve()))
    from . import targets  # imports agentd: after the checkout under test is first

    with (
        tempfile.TemporaryDirectory(prefix="agentd-auth-path-") as workdir,
        targets.redis(Path(workdir), []) as redis,
    ):
        uvloop.install()
        result = asyncio.run(measure(args.requests, args.repeat, redis.url))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"auth path: {result['us_per_request']} us of CPU per request "
        f"(ticks alone: {result['tick_us_per_request']} us); "
        f"admitted on leases: {100 * float(result['leased_share']):.1f}%; "  # type: ignore[arg-type]
        f"agentd at {result['agentd']}"
    )


if __name__ == "__main__":
    main()
