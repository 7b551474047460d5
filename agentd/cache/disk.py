"""The response cache's L3: one SQLite file (WAL mode) on local disk, shared by the
instance's workers and surviving restarts, bounded in size with least-recently-used
eviction.

SQLite is in the standard library, safe for several processes at once in WAL mode, and
checks its own pages: a damaged file is detected (``quick_check`` at open, or any
``DatabaseError`` later), logged, and replaced by an empty one — the cache is only a
cache, so a request never fails because of it. A file that is busy or locked (another
worker opening or writing it: ``OperationalError``) is not damaged and is never removed:
opening it is tried again, and past :data:`OPEN_WAIT_S` left to the first use. Every
call runs in one thread per worker, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ("DiskCache",)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Evict down to this share of the budget, so eviction does not run on every put.
LOW_WATER = 0.9
# Recount the file's bytes every this many puts (counting is a table scan).
RECOUNT_EVERY = 64
# How long one statement waits for another connection's lock (SQLite's busy timeout), and
# how long the start tries to open a busy file before leaving that to the first use.
BUSY_S = 5.0
OPEN_WAIT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    expires REAL NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
"""


class DiskCache:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentd-l3")
        self._puts = 0
        self._bytes = 0

    # -- running in the cache's thread -------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + OPEN_WAIT_S
        while True:
            try:
                self._connect()
                row = self._db.execute("PRAGMA quick_check").fetchone()  # type: ignore[union-attr]
                if row is None or row[0] != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {row}")
                return
            except sqlite3.OperationalError as exc:
                # Busy or locked: workers of one instance open the same file at once (a
                # new file's WAL switch and schema take a lock SQLite may refuse at once).
                self._disconnect()
                if time.monotonic() >= deadline:
                    log.warning("L3 cache file %s is busy (%s); opening it on first use",
                                self.path, exc)  # fmt: skip
                    return
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                self._rebuild(exc)
                return

    def _connect(self) -> None:
        db = sqlite3.connect(
            self.path, timeout=BUSY_S, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._bytes = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        except BaseException:
            db.close()
            raise
        self._db = db

    def _disconnect(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _rebuild(self, exc: BaseException) -> None:
        log.error("L3 cache file %s is damaged (%s); starting an empty one", self.path, exc)
        self._disconnect()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        self._connect()

    def _guarded(self, fn: Any, *args: Any) -> Any:
        """Run ``fn``; a damaged file is rebuilt and the call answers as a miss."""
        try:
            if self._db is None:
                self._connect()
            return fn(*args)
        except sqlite3.OperationalError as exc:
            # Busy (another worker writes) or similar: skip this time, never fail a request.
            log.debug("L3 cache skipped: %s", exc)
            return None
        except sqlite3.DatabaseError as exc:
            self._rebuild(exc)
            return None

    def _get(self, key: str, now: float) -> bytes | None:
        db = self._db
        assert db is not None
        row = db.execute("SELECT value, expires FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[1] <= now:
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            return None
        db.execute("UPDATE entries SET used = ? WHERE key = ?", (now, key))
        return bytes(row[0])

    def _put(self, key: str, value: bytes, expires: float, now: float) -> None:
        db = self._db
        assert db is not None
        db.execute(
            "INSERT OR REPLACE INTO entries (key, value, size, expires, used)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, value, len(value), expires, now),
        )
        self._bytes += len(value)
        self._puts += 1
        if self._puts % RECOUNT_EVERY == 0 or self._bytes > self.max_bytes:
            self._bytes = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        if self._bytes > self.max_bytes:
            self._evict(now)

    def _evict(self, now: float) -> None:
        db = self._db
        assert db is not None
        db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
        target = self.max_bytes * LOW_WATER
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        for key, size in db.execute("SELECT key, size FROM entries ORDER BY used").fetchall():
            if total <= target:
                break
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            total -= size
        self._bytes = total

    def _clear(self) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM entries")
        self._bytes = 0

    # -- the event loop's side ---------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._disconnect)
        self._executor.shutdown(wait=False)

    async def get(self, key: str) -> bytes | None:
        return await self._run(self._guarded, self._get, key, time.time())

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        now = time.time()
        await self._run(self._guarded, self._put, key, value, now + ttl_s, now)

    async def clear(self) -> None:
        await self._run(self._guarded, self._clear)

    @property
    def nbytes(self) -> int:
        return self._bytes
