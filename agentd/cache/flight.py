"""Single-flight: identical requests in flight at once cost one model call.

It works at two scales. In a worker, the first request for a key starts one producing
task and every request for that key — the first included — follows it, so a client that
goes away does not break the others. Across workers and instances, the producing task
first takes a short lock in Redis (``[cache] flight_lease``, renewed while it runs); the
loser tails the winner's chunks from a short-lived Redis stream as they are generated.
A leader that lets go of its lock says so on the stream in the same step, so followers
never wait on a flight that ended: one that found no reply on the stream takes over
(and finds the reply in the cache). If the winner dies, its lock expires and a follower
that has not yet passed any text to its client takes over; one that has fails like a
broken upstream stream (never duplicated or mixed output).

A reply's tool call pieces are followed like its text (a list of pieces among the text
chunks); the reply kept in the cache holds the text chunks and the calls whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import AgentCacheConfig, CacheConfig
from ..errors import AgentdError, UpstreamError, UpstreamTimeout
from .reply import CachedReply, Served
from .tiers import Tiers

__all__ = ("Flights", "Produce")

log = logging.getLogger(__name__)

# How long a follower waits for the next entry before it checks the leader is alive. A
# leader that ends says so on the stream (``end``, ``err``, then ``gone`` as it lets go
# of its lock), so this only paces noticing one that died.
TAIL_BLOCK_S = 1.0

Produce = Callable[[], AsyncIterator[Any]]


@dataclass
class _Flight:
    """One key's production in this worker, which every requester of the key follows."""

    # Text chunks, and lists of tool call pieces, in the order they came.
    chunks: list[str | list[dict[str, Any]]] = field(default_factory=list)
    reply: CachedReply | None = None
    level: str = "miss"
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[str | list[dict[str, Any]] | Served]:
        seen = 0
        while True:
            while seen < len(self.chunks):
                seen += 1
                yield self.chunks[seen - 1]
            if self.error is not None:
                raise self.error
            if self.reply is not None:
                yield Served(self.reply, self.level)
                return
            await self.changed.wait()


class Flights:
    def __init__(self, config: CacheConfig, tiers: Tiers) -> None:
        self._ttl = config.flight_lease
        self._tiers = tiers
        self._blobs = tiers.blobs
        self._flights: dict[bytes, _Flight] = {}

    async def serve(
        self, key: bytes, policy: AgentCacheConfig, produce: Produce, deadline: float
    ) -> AsyncIterator[str | list[dict[str, Any]] | Served]:
        """After a miss: the reply's text chunks (and lists of tool call pieces) as they
        are produced (by this worker, or by whichever process leads the key's flight),
        then a :class:`Served`."""
        flight = self._flights.get(key)
        if flight is None:
            self._tiers.count("miss")
            flight = self._flights[key] = _Flight()
            flight.task = asyncio.create_task(self._fly(key, flight, policy, produce, deadline))
        else:
            self._tiers.count("coalesced")
        async for item in flight.follow():
            yield item

    async def _fly(
        self,
        key: bytes,
        flight: _Flight,
        policy: AgentCacheConfig,
        produce: Produce,
        deadline: float,
    ) -> None:
        hexkey, owner, held = key.hex(), secrets.token_hex(8), False
        try:
            while (lead := await self._lead(hexkey, owner)) is False:
                # Another process produces this reply: follow its stream.
                if await self._tail(hexkey, flight, owner, deadline):
                    return
                # Its leader is gone and we passed no text on yet: take over.
            # Only the lock's holder writes the key's stream. Without the lock (the store
            # did not answer) this worker computes for its own clients alone: a leader
            # elsewhere may own the stream, whose followers must get neither this
            # reply's chunks mixed into theirs nor this call's error.
            held = lead is True and self._blobs.shared
            keeper = asyncio.create_task(self._keep_lock(hexkey, owner)) if held else None
            try:
                again = await self._tiers.lookup(key, policy)  # it may have just finished
                if again is not None:
                    flight.chunks.extend(again.reply.chunks)
                    flight.reply, flight.level = again.reply, again.level
                    return
                await self._produce(key, flight, policy, produce, relay=held)
            except BaseException as exc:
                # Before the release below: a follower that reads the release's ``gone``
                # first would take over and call the model again instead of failing.
                if held:
                    with contextlib.suppress(AgentdError):
                        await self._blobs.emit(hexkey, {"err": str(exc).encode()}, self._ttl)
                raise
            finally:
                if keeper is not None:
                    keeper.cancel()
                if held:
                    # Its ``gone`` wakes the followers: after the ``end`` of a reply they
                    # have it already; after none (found in the cache above, or not
                    # relayed) they look it up or take over at once.
                    with contextlib.suppress(AgentdError):
                        await self._blobs.release(hexkey, owner, self._ttl)
        except BaseException as exc:
            flight.error = exc if isinstance(exc, Exception) else UpstreamError("cancelled")
            if not isinstance(exc, Exception):
                raise
        finally:
            flight.notify()
            self._flights.pop(key, None)

    async def _lead(self, hexkey: str, owner: str) -> bool | None:
        """Whether this process took the key's lock; None when the store did not answer
        (then it computes here rather than fail)."""
        try:
            return await self._blobs.lead(hexkey, owner, self._ttl)
        except AgentdError:
            return None

    async def _keep_lock(self, hexkey: str, owner: str) -> None:
        """Renew the leader's lock (and stream) every third of the lease for as long as
        it leads, whether chunks come or not: an upstream silent for longer than the lease
        (a slow first token, a long pause) must not let a follower take over and call the
        model a second time, nor mix its reply into this one's stream."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                held = await self._blobs.renew(hexkey, owner, self._ttl)
            except AgentdError:
                continue  # the store is away: the lock may outlast it, try again
            if not held:
                # Expired (this loop stalled past the lease): a follower may take over
                # and call the model too.
                log.warning("single-flight lock of %s not held while its call runs", hexkey)
                return

    async def _produce(
        self, key: bytes, flight: _Flight, policy: AgentCacheConfig, produce: Produce, relay: bool
    ) -> None:
        """Call the model; ``relay``: pass its chunks on to followers elsewhere."""
        hexkey, blobs = key.hex(), self._blobs
        finish, usage, node, calls = "stop", {}, "", None
        async with contextlib.aclosing(produce()) as stream:
            async for chunk in stream:
                if chunk.text:
                    flight.chunks.append(chunk.text)
                    flight.notify()
                    if relay:
                        with contextlib.suppress(AgentdError):
                            await blobs.emit(hexkey, {"t": chunk.text.encode()}, self._ttl)
                if chunk.tool_deltas:
                    flight.chunks.append(chunk.tool_deltas)
                    flight.notify()
                    if relay:
                        pieces = orjson.dumps(chunk.tool_deltas)
                        with contextlib.suppress(AgentdError):
                            await blobs.emit(hexkey, {"p": pieces}, self._ttl)
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
                node = chunk.node or node
                calls = chunk.tool_calls or calls
        reply = CachedReply(_texts(flight.chunks), finish, usage, node, calls)
        await self._tiers.save(key, reply, policy)
        if relay:
            meta = orjson.dumps({"f": finish, "u": usage, "n": node, "tc": calls})
            with contextlib.suppress(AgentdError):
                await blobs.emit(hexkey, {"end": meta}, self._ttl)
        flight.reply = reply

    async def _tail(self, hexkey: str, flight: _Flight, owner: str, deadline: float) -> bool:
        """Relay another process's flight; True when it completed, False when its leader
        vanished before we passed any text on (the caller takes over)."""
        after = b"0"
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() > deadline:
                raise UpstreamTimeout("timed out following an identical request")
            entries = await self._blobs.tail(hexkey, after, TAIL_BLOCK_S)
            for entry_id, fields in entries:
                after = entry_id
                if b"t" in fields:
                    flight.chunks.append(fields[b"t"].decode())
                    flight.notify()
                elif b"p" in fields:
                    flight.chunks.append(orjson.loads(fields[b"p"]))
                    flight.notify()
                elif b"end" in fields:
                    meta = orjson.loads(fields[b"end"])
                    flight.reply = CachedReply(_texts(flight.chunks), meta["f"], meta["u"],
                                               meta["n"], meta.get("tc"))  # fmt: skip
                    return True
                elif b"err" in fields:
                    raise UpstreamError(fields[b"err"].decode() or "the shared call failed")
                elif b"gone" in fields:
                    # The leader let go without a reply on the stream: it found the
                    # reply in the cache, or could not relay it.
                    return self._leader_gone(flight)
            if entries:
                continue
            # No word for TAIL_BLOCK_S: a leader that died says nothing, its lock expires.
            if await self._blobs.lead(hexkey, owner, self._ttl):
                # The lock was free: its holder is gone.
                await self._blobs.release(hexkey, owner, self._ttl)
                return self._leader_gone(flight)

    @staticmethod
    def _leader_gone(flight: _Flight) -> bool:
        """False (the caller takes over) unless this follower passed text on already."""
        if flight.chunks:
            raise UpstreamError("the call serving this identical request stopped")
        return False


def _texts(chunks: list[str | list[dict[str, Any]]]) -> list[str]:
    """The text chunks of a flight (what a cached reply keeps beside its whole calls)."""
    return [chunk for chunk in chunks if isinstance(chunk, str)]
