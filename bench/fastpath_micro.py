"""Fastpath microbenchmark: each hot-path function, compiled vs pure, as a speed ratio.

    .venv/bin/python -m bench.fastpath_micro [--repeat 7] [--seconds 0.2] [--out FILE]

Runs every case on ``agentd._fastpath`` (Cython) and ``agentd._fastpath_py`` (the pure
twin) in the same process, alternating them round by round so both see the same noise,
and keeps each one's fastest round (per call). The inputs are a cache-hit turn's: a
20-message chat body of about 4 KB, the cache key of that turn, L1 lookups (hit and
miss) in a cache of 1,000 entries, a put into a full cache (each evicts one), and the
hash slot of a session key. ``cache_key`` is also compared with the best pure way to
hash the same inputs (orjson with sorted keys, then SHA-256, both C: a weaker canonical
form than the twin's, whose encoder is Python), and ``parse_chat`` with its floor,
``orjson.loads`` alone, which both sides pay. Each call is timed as ``timeit`` statement
text, so no wrapper function is counted; ``put`` includes a ``next()`` on a key cycle
(on both sides alike). Ratios above 1 mean the compiled one is faster.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import platform
import random
import timeit
from pathlib import Path
from typing import Any

import orjson

from agentd import _fastpath_py

# fmt: off
WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "agent",
    "answers", "questions", "about", "orders", "refunds", "shipping", "invoices", "accounts",
    "passwords", "and", "delivery", "times",
]
# fmt: on


def chat_body(messages: int = 20) -> tuple[bytes, list[dict[str, str]]]:
    """A stateless chat request: a system prompt, then user/assistant turns (~4 KB)."""
    rnd = random.Random(0)
    history = [{"role": "system", "content": "You are the support agent of a small shop. "
                "Answer briefly and politely; ask for an order number when needed."}]  # fmt: skip
    for i in range(messages - 1):
        text = " ".join(rnd.choice(WORDS) for _ in range(33))
        history.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    body = {"model": "support", "messages": history, "temperature": 0, "max_tokens": 256}
    return orjson.dumps(body), history


def baseline_cache_key(
    agent: str, model: str, messages: list[Any], params: dict[str, Any]
) -> bytes:
    """The best pure cache key: C serializer with sorted keys, then the same C hash."""
    data = orjson.dumps([agent, model, messages, params], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).digest()[:16]


def cases(module: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (statement, its globals), for one implementation."""
    body, history = chat_body()
    params = {"temperature": 0, "max_tokens": 256}
    hit = module.LRUCache(1000 * 4096)
    for i in range(1000):
        hit.put(b"%016d" % i, object(), 4096, float("inf"))
    full = module.LRUCache(1000 * 4096)
    keys = [b"%016d" % i for i in range(3000)]
    for key in keys[:1000]:
        full.put(key, object(), 4096, float("inf"))
    return {
        "parse_chat (20 messages, 4 KB)": (
            "parse_chat(body, None)",
            {"parse_chat": module.parse_chat, "body": body},
        ),
        "cache_key (the same turn)": (
            "cache_key('support', 'gpt-4o-mini', history, params)",
            {"cache_key": module.cache_key, "history": history, "params": params},
        ),
        "LRUCache.get, hit": ("get(key, 1.0)", {"get": hit.get, "key": b"%016d" % 500}),
        "LRUCache.get, miss": ("get(key, 1.0)", {"get": hit.get, "key": b"%016d" % 5000}),
        "LRUCache.put, evicting one": (
            "put(next(keys), value, 4096, 1e9)",
            {"put": full.put, "keys": itertools.cycle(keys[1000:]), "value": object()},
        ),
        "key_slot (session key)": (
            "key_slot(key)",
            {"key_slot": module.key_slot, "key": "agentd:s:{s_9f2c4e1a7b3d8c6e5f0a}:meta"},
        ),
    }


def timer(statement: str, namespace: dict[str, Any], seconds: float) -> tuple[timeit.Timer, int]:
    """A timer for ``statement`` and how many calls make a round of about ``seconds``."""
    timer = timeit.Timer(statement, globals=namespace)
    number, taken = timer.autorange()
    return timer, max(1, int(number * seconds / taken))


def measure(repeat: int, seconds: float) -> dict[str, Any]:
    import agentd._fastpath as compiled  # the build must provide it: `make ext`

    impls = {"cython": cases(compiled), "python": cases(_fastpath_py)}
    body, history = chat_body()
    # Beside the twin: the best pure way to compute a cache key (C serializer, C hash),
    # and the floor under parse_chat (orjson.loads alone, which both sides pay).
    baseline = {
        "cache_key (the same turn)": (
            "cache_key('support', 'gpt-4o-mini', history, params)",
            {"cache_key": baseline_cache_key, "history": history,
             "params": {"temperature": 0, "max_tokens": 256}},
        ),
        "parse_chat (20 messages, 4 KB)": ("loads(body)", {"loads": orjson.loads, "body": body}),
    }  # fmt: skip
    results: dict[str, Any] = {}
    for name in impls["cython"]:
        timers = {impl: timer(*table[name], seconds) for impl, table in impls.items()}
        if name in baseline:
            timers["baseline"] = timer(*baseline[name], seconds)
        best = dict.fromkeys(timers, float("inf"))
        for _ in range(repeat):  # alternate, so every side sees the same noise
            for side, (clock, number) in timers.items():
                best[side] = min(best[side], clock.timeit(number) / number)
        row = {
            "cython_us": best["cython"] * 1e6,
            "python_us": best["python"] * 1e6,
            "ratio": best["python"] / best["cython"],
        }
        if "baseline" in best:
            row["baseline_us"] = best["baseline"] * 1e6
            row["ratio_to_baseline"] = best["baseline"] / best["cython"]  # floor: below 1
        results[name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds per side (best kept)")
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one round")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args()
    results = measure(args.repeat, args.seconds)
    body, _ = chat_body()
    print(f"Python {platform.python_version()} on {platform.machine()}, orjson "
          f"{orjson.__version__}; chat body {len(body)} bytes; best of {args.repeat}")  # fmt: skip
    print(f"{'case':<32} {'cython us':>10} {'python us':>10} {'ratio':>7}")
    for name, row in results.items():
        line = (
            f"{name:<32} {row['cython_us']:>10.3f} {row['python_us']:>10.3f} {row['ratio']:>7.1f}"
        )
        if name.startswith("cache_key"):
            line += (
                f"   orjson sorted + sha256: {row['baseline_us']:.3f} us, "
                f"ratio {row['ratio_to_baseline']:.1f}"
            )
        elif "baseline_us" in row:
            line += f"   floor, orjson.loads alone: {row['baseline_us']:.3f} us"
        print(line)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
