"""``agentd reshard``: the command around :mod:`agentd.store.redis.reshard`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .config import Config, ConfigError, from_dict

__all__ = ("run_reshard", "url_list")

EXIT_FAILED, EXIT_CONFIG, EXIT_STOPPED = 1, 2, 3


def url_list(text: str) -> list[str]:
    """``--to``'s URLs, comma-separated: a piece with no ``scheme://`` continues the URL
    before it (a ``redis+sentinel://`` URL names its sentinels with commas)."""
    urls: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "://" in piece or not urls:
            urls.append(piece)
        else:
            urls[-1] += "," + piece
    return urls


def run_reshard(args: argparse.Namespace, config: Config | None) -> int:
    if config is None:
        return EXIT_CONFIG
    try:
        return asyncio.run(_run(args, config))
    except KeyboardInterrupt:
        print("agentd reshard: interrupted; run the same command again to go on", flush=True)
        return 130


async def _run(args: argparse.Namespace, config: Config) -> int:
    from redis import exceptions as rexc

    from .store.redis.reshard import Plan, ReshardError, begin, move, recorded_from

    old, new = list(config.redis.urls), list(args.to)
    if config.redis.cluster or not old:
        print("agentd reshard: needs [redis] urls, without cluster = true", file=sys.stderr)
        return EXIT_CONFIG
    try:
        from_dict({"redis": {"urls": new}})  # the rules of [redis] urls
    except ConfigError as exc:
        print(f"agentd reshard: --to: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.move and old == new:
            # The config names the new list already (the instances' file, switched):
            # the old list is the one recorded.
            recorded = await recorded_from(new[0])
            if recorded is None:
                print(f"agentd reshard: no reshard recorded on {new[0]}", file=sys.stderr)
                return EXIT_FAILED
            old = recorded
        plan = Plan(old, new, timeout=max(config.redis.timeout, 10.0))
    except ReshardError as exc:
        print(f"agentd reshard: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (rexc.RedisError, OSError) as exc:
        print(f"agentd reshard: redis: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{len(plan.moving)} of 16384 slots change owner", flush=True)
    try:
        if not args.move:
            fresh = await begin(plan)
            print(
                ("recorded" if fresh else "already recorded")
                + f" on {new[0]}: now set [redis] urls to the new list on every instance, "
                "SIGHUP each, wait for 'reload complete' everywhere, then run this command "
                "again with --move",
                flush=True,
            )
            return 0
        report = await move(plan, args.max_slots)
    except ReshardError as exc:
        print(f"agentd reshard: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (rexc.RedisError, OSError) as exc:
        print(f"agentd reshard: redis: {exc}; run the same command again to go on", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await plan.close()
    print(
        f"moved {report.keys} key(s) in {report.slots} slot(s), {report.stragglers} written "
        f"meanwhile; {report.indexed} session index entries moved",
        flush=True,
    )
    for key in report.kept:
        print(f"written on both shards, the new shard's value kept: {key}", flush=True)
    for key in report.merged:
        print(f"job queue written on both shards, the old shard's jobs added: {key}", flush=True)
    if report.stopped:
        print("stopped (--max-slots): run the same command again to go on", flush=True)
        return EXIT_STOPPED
    print("done: every key is on its shard of the new list", flush=True)
    return 0
