"""API key records (:class:`agentd.store.Keyring`), on every store topology."""

from __future__ import annotations

import asyncio

from agentd.store import KeyRecord, Store

from .store_helpers import TIMEOUT


def record(key_id: str, tenant: str = "acme", **fields: object) -> KeyRecord:
    return KeyRecord(id=key_id, tenant=tenant, secret_hash="ab" * 32, **fields)  # type: ignore[arg-type]


async def test_a_record_round_trips_and_its_id_is_never_taken_twice(store: Store) -> None:
    keyring = store.keyring
    full = record(
        "00000000000000a1",
        name="ci",
        scopes=("chat", "state"),
        agents=("echo",),
        limits={"requests_per_minute": 10},
        created_at=1700000000.5,
        expires_at=1900000000.25,
    )
    assert await keyring.create(full)
    assert await keyring.get(full.id) == full
    assert not await keyring.create(record(full.id, tenant="other"))
    assert await keyring.get(full.id) == full
    bare = record("00000000000000a2")
    assert await keyring.create(bare)
    assert await keyring.get(bare.id) == bare
    assert await keyring.get("00000000000000ff") is None


async def test_update_changes_only_the_fields_given_and_only_existing_records(
    store: Store,
) -> None:
    keyring = store.keyring
    await keyring.create(record("00000000000000b1", name="a", scopes=("chat",)))
    updated = await keyring.update("00000000000000b1", {"disabled": True, "agents": None})
    assert updated == record("00000000000000b1", name="a", scopes=("chat",), disabled=True)
    assert await keyring.get("00000000000000b1") == updated
    assert await keyring.update("00000000000000b2", {"disabled": True}) is None
    assert await keyring.get("00000000000000b2") is None


async def test_listing_by_tenant_and_all_pages_in_id_order(store: Store) -> None:
    keyring = store.keyring
    ids = [f"00000000000000{n:02x}" for n in range(12)]
    for n, key_id in enumerate(ids):
        await keyring.create(record(key_id, tenant="even" if n % 2 == 0 else "odd"))
    page = await keyring.list("even", limit=4)
    assert [r.id for r in page.keys] == ids[0:8:2] and page.next_after == ids[6]
    page = await keyring.list("even", limit=4, after=page.next_after)
    assert [r.id for r in page.keys] == ids[8:12:2] and page.next_after is None
    seen: list[str] = []
    after = None
    while True:
        page = await keyring.list(None, limit=5, after=after)
        seen += [r.id for r in page.keys]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == ids
    assert (await keyring.list("nobody", limit=10)).keys == []


async def test_revoke_removes_the_record_and_its_listing(store: Store) -> None:
    keyring = store.keyring
    await keyring.create(record("00000000000000c1"))
    gone = await keyring.delete("00000000000000c1")
    assert gone is not None and gone.tenant == "acme"
    assert await keyring.get("00000000000000c1") is None
    assert await keyring.delete("00000000000000c1") is None
    assert (await keyring.list("acme", limit=10)).keys == []
    assert (await keyring.list(None, limit=10)).keys == []


async def test_every_change_is_announced_by_id(store: Store) -> None:
    keyring = store.keyring
    feed = await keyring.changes()
    try:
        await keyring.create(record("00000000000000d1"))
        await keyring.update("00000000000000d1", {"name": "x"})
        await keyring.delete("00000000000000d1")
        seen = [await asyncio.wait_for(feed.get(), TIMEOUT) for _ in range(3)]
        assert seen == [b"00000000000000d1"] * 3
    finally:
        await feed.close()
