"""bench.scenarios.redismem: Redis's memory for its data, without its clients' buffers,
against a real redis-server with real connections holding real buffers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import redis

from bench.scenarios.redismem import _not_rehashing, data_bytes
from tests.procs import RedisServer
from tests.waiting import wait_until_sync

CLIENTS = 30
PENDING = 60_000  # a bulk argument announced but not sent: Redis reserves it whole


@contextlib.contextmanager
def _stalled_clients(port: int) -> Iterator[list[socket.socket]]:
    """CLIENTS connections, each half-way through a SET whose value Redis has room made
    for in its query buffer (a big argument's buffer is sized at once)."""
    socks = []
    try:
        for _ in range(CLIENTS):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % PENDING + b"x" * 100)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def test_data_bytes_leaves_out_what_the_clients_hold(redis_standalone: RedisServer) -> None:
    url = redis_standalone.url
    with redis.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(2000):
            pipe.hset(f"h:{i}", mapping={"a": "1", "b": "two"})
        pipe.execute()

        def used() -> int:
            return int(client.info("memory")["used_memory"])

        def pending() -> int:
            return sum(int(c["qbuf"]) + int(c["qbuf-free"]) for c in client.client_list())

        data, raw = data_bytes(url), used()
        with _stalled_clients(redis_standalone.port):
            # Redis has read every connection's header (its buffer made room for the value).
            wait_until_sync(lambda: pending() >= CLIENTS * PENDING, 30.0, "the headers read")
            held_raw, held_data = used() - raw, data_bytes(url) - data
        # used_memory counts the buffers; the data reading does not (what a connection
        # holds outside tot-mem, its connection and list node, is about 1.4 KB).
        assert held_raw > CLIENTS * PENDING, held_raw
        assert abs(held_data) < CLIENTS * 2048, (held_data, held_raw)
        # And it sees the data: 1,000 more hashes cost about what the first 2,000 did, each.
        before = data_bytes(url)
        pipe = client.pipeline(transaction=False)
        for i in range(2000, 3000):
            pipe.hset(f"h:{i}", mapping={"a": "1", "b": "two"})
        pipe.execute()
        grown = data_bytes(url) - before
        assert 50 * 1000 < grown < 500 * 1000, grown


def test_a_key_table_with_two_tables_of_slots_is_rehashing() -> None:
    one = {"db.0": {"overhead.hashtable.main": 100 * 40 + 128 * 8,
                    "overhead.hashtable.expires": 50 * 24 + 64 * 8}}  # fmt: skip
    both = {"db.0": {"overhead.hashtable.main": 200 * 40 + (128 + 256) * 8,
                     "overhead.hashtable.expires": 50 * 24 + 64 * 8}}  # fmt: skip
    assert _not_rehashing(one, {"db0": {"keys": 100, "expires": 50}})
    assert not _not_rehashing(both, {"db0": {"keys": 200, "expires": 50}})
    assert _not_rehashing({}, {})  # an empty db
