"""The service registry (:class:`agentd.store.registry.Registry`) on every store topology:
one round trip lists every worker, entries end with their heartbeats or their leaving."""

from __future__ import annotations

import time

from agentd.store import Store

from .store_helpers import LONG
from .waiting import wait_until

TTL_S = 60.0
# Short enough to wait out in a test, long enough that two beats and a look fit in it on
# a loaded machine (0.3 s did not, with the suite's processes on two cores).
SHORT_TTL_S = 3.0


async def test_workers_are_listed_in_id_order_until_they_leave(store: Store) -> None:
    registry = store.registry
    before = time.time()
    for wid in ("i2/0", "i1/1", "i1/0"):
        seen = await registry.beat(wid, b'{"worker": "%s"}' % wid.encode(), TTL_S)
        assert seen >= before - 1  # the store's clock: the same host here
    members = await registry.members(TTL_S)
    assert [m.id for m in members] == ["i1/0", "i1/1", "i2/0"]
    assert members[0].entry == b'{"worker": "i1/0"}'
    assert all(m.last_seen >= before - 1 for m in members)
    # A beat replaces the entry.
    await registry.beat("i1/0", b'{"worker": "again"}', TTL_S)
    assert (await registry.members(TTL_S))[0].entry == b'{"worker": "again"}'
    await registry.leave("i1/1")
    await registry.leave("nobody/0")
    assert [m.id for m in await registry.members(TTL_S)] == ["i1/0", "i2/0"]


async def test_a_silent_worker_drops_out_after_the_ttl(store: Store) -> None:
    registry = store.registry
    await registry.beat("gone/0", b"{}", SHORT_TTL_S)
    await registry.beat("live/0", b"{}", SHORT_TTL_S)
    assert [m.id for m in await registry.members(SHORT_TTL_S)] == ["gone/0", "live/0"]

    async def only_live() -> bool:
        await registry.beat("live/0", b"{}", SHORT_TTL_S)
        return [m.id for m in await registry.members(SHORT_TTL_S)] == ["live/0"]

    await wait_until(only_live, LONG, "the silent worker to drop out")
    # The next beat, later still, removes its entry: a longer look finds nothing of it.
    await registry.beat("live/0", b"{}", SHORT_TTL_S)
    assert [m.id for m in await registry.members(TTL_S)] == ["live/0"]
