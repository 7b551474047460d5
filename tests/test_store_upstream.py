"""The history window in its upstream form: the stored messages without the store's
fields, the same whether decoded now or kept from an earlier turn, within its bound."""

from __future__ import annotations

import orjson

from agentd.store import upstream
from agentd.store.codec import decode_message, encode_message


def _payload(i: int, **extra: object) -> bytes:
    return encode_message({"role": "user", "content": f"m{i}", **extra}, 1700000000.0 + i, 1 << 20)


def test_the_window_is_the_stored_messages_without_the_store_fields() -> None:
    rows = [(1, _payload(1, turn="t1")), (2, _payload(2, turn="t1", metadata={"k": 1}))]
    expected = [
        {k: v for k, v in decode_message(seq, p).items() if k not in upstream.STORE_FIELDS}
        for seq, p in rows
    ]
    assert expected == [{"role": "user", "content": "m1"}, {"role": "user", "content": "m2"}]
    first = upstream.upstream_window(rows)
    # Read again (as the next turn does), from equal bytes that are other objects.
    again = upstream.upstream_window([(seq, bytes(bytearray(p))) for seq, p in rows])
    assert first == again == expected
    assert all(a is b for a, b in zip(first, again, strict=True))  # decoded once


def test_the_kept_messages_stay_within_their_bound() -> None:
    big = orjson.dumps({"role": "user", "content": "x" * upstream.LARGEST})
    assert upstream.upstream_window([(1, big)]) == upstream.upstream_window([(1, big)])
    assert big not in upstream._cache  # larger than LARGEST: decoded each time
    rows = [(i, _payload(i, turn=f"bound-{i}")) for i in range(upstream.CACHE_BYTES // 60)]
    upstream.upstream_window(rows)
    assert upstream._held <= upstream.CACHE_BYTES
    assert upstream._held == sum(len(p) for p in upstream._cache)
    assert rows[-1][1] in upstream._cache and rows[0][1] not in upstream._cache
