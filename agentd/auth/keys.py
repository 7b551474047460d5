"""API keys: their format, how they are stored and checked, and each worker's cache of
key records.

A key is ``sk-agentd-<id>-<secret>``: ``id`` is 16 hex digits (64 random bits, safe to
log and show), ``secret`` 43 base64url characters (256 random bits from ``secrets``).
The id names the record, so checking a key is one look-up by id, never a scan. The
record holds SHA-256 of the secret, never the key: a plain hash is enough because the
secret is 256 random bits (nothing to guess, so no need for a slow, salted password
hash, which would cost milliseconds per uncached request); the comparison is
constant-time (``hmac.compare_digest``). Once a key matched, the worker compares the
next requests' secrets, in constant time too, with the one that matched, and hashes
nothing (:meth:`KeyCache.known`; docs/auth.md says why that is as safe).

Each worker caches the records it read (``auth.key_cache_s``) and forgets one as soon
as the store's change feed names it, which every worker of every instance follows: a
revoke or an update is seen everywhere as fast as pub/sub carries it, and within
``key_cache_s`` (2 s by default) even if the feed is down. An unknown id is remembered
(``auth.negative_cache_s``, at most :data:`MAX_NEGATIVE` ids per worker), so repeating a
wrong key costs one look-up per that time; a key created later is found once that entry
ends, and at once on the worker that created it and on every worker the change feed
reaches. Look-ups of ids this worker does not hold at all are budgeted
(``auth.key_lookups_per_s`` per worker): a flood of made-up ids gets 503 (retry) past it
instead of turning into a flood of store look-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from ..config import AuthConfig, LimitsConfig
from ..errors import AgentdError, Overloaded, Unauthorized
from ..store import KeyRecord, Keyring
from .identity import Identity

__all__ = (
    "KEY_ID_RE",
    "KEY_PREFIX",
    "MAX_NEGATIVE",
    "KeyCache",
    "NewKey",
    "hash_secret",
    "identity_of_record",
    "new_key",
    "parse_key",
)

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-agentd-"
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_KEY_RE = re.compile(r"sk-agentd-([0-9a-f]{16})-([A-Za-z0-9_-]{43})")

_LIMIT_NAMES = frozenset(LimitsConfig.__dataclass_fields__)

# Unknown ids one worker remembers; past it the oldest are forgotten first.
MAX_NEGATIVE = 10_000
# Records one worker keeps; past it the least recently used are dropped.
MAX_RECORDS = 100_000


class NewKey(NamedTuple):
    key: str  # shown once, to whoever created it
    id: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)  # 256 bits, 43 characters
    return NewKey(f"{KEY_PREFIX}{key_id}-{secret}", key_id, hash_secret(secret))


def parse_key(credential: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None."""
    match = _KEY_RE.fullmatch(credential)
    return (match[1], match[2]) if match else None


def identity_of_record(record: KeyRecord) -> Identity:
    return Identity(
        tenant=record.tenant,
        scopes=frozenset(record.scopes),
        kind="key",
        key_id=record.id,
        agents=None if record.agents is None else frozenset(record.agents),
        limits=LimitsConfig(**{k: v for k, v in record.limits.items() if k in _LIMIT_NAMES})
        if record.limits
        else None,
        expires_at=record.expires_at,
    )


# A well-formed key's length, and where its id and its secret are in it.
KEY_LEN = len(KEY_PREFIX) + 16 + 1 + 43
_ID_AT, _SECRET_AT = len(KEY_PREFIX), len(KEY_PREFIX) + 17


class _Entry:
    """A cached record, and the secret last presented that matched its hash."""

    __slots__ = ("disabled", "fresh_until", "identity", "secret_hash", "verified")

    def __init__(
        self, identity: Identity, secret_hash: bytes, disabled: bool, fresh_until: float
    ) -> None:
        self.identity, self.secret_hash, self.disabled = identity, secret_hash, disabled
        self.fresh_until = fresh_until  # monotonic
        # The secret that matched ``secret_hash`` (see :meth:`KeyCache.known`).
        self.verified = ""


class KeyCache:
    """One worker's key records: credential → identity, with the store consulted at most
    once per id per ``key_cache_s``."""

    def __init__(self, keyring: Keyring, config: AuthConfig) -> None:
        self.keyring = keyring
        self.ttl_s = config.key_cache_s
        self.negative_s = config.negative_cache_s
        self._records: OrderedDict[str, _Entry] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()  # id → until (monotonic)
        self._flights: dict[str, asyncio.Future[_Entry | None]] = {}
        # Bumped by every forget: a look-up that began before it does not cache its
        # (possibly stale) answer.
        self._generation = 0
        self._budget = _Bucket(config.key_lookups_per_s)
        self._follower: asyncio.Task[None] | None = None
        # Who wants to hear that a key changed (open WebSockets authenticated by it).
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        # Store look-ups made (for tests and metrics).
        self.lookups = 0
        # The credential object known last, its entry and the generation it was known
        # in: the same object again (the front hands over the credential of a header
        # block it has seen) needs no comparison (see known()).
        self._last: tuple[str | None, _Entry | None, int] = (None, None, -1)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._follower = asyncio.create_task(self._follow_changes(), name="key changes")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._follower, 1.0)

    async def _follow_changes(self) -> None:
        while True:
            try:
                feed = await self.keyring.changes()
            except AgentdError as exc:
                log.warning("auth: cannot follow key changes (%s); retrying", exc)
                self.forget_all()
                await asyncio.sleep(max(self.ttl_s, 0.5))
                continue
            # Subscribed: what changed before may have been missed.
            self.forget_all()
            try:
                while True:
                    changed = await feed.get()
                    if changed is None:
                        self.forget_all()
                    else:
                        self.forget(changed.decode())
            finally:
                await feed.close()

    # -- invalidation ------------------------------------------------------------------

    def forget(self, key_id: str) -> None:
        """Drop what this worker knows of ``key_id`` (changed, revoked or created)."""
        self._generation += 1
        self._records.pop(key_id, None)
        self._negative.pop(key_id, None)
        for callback in list(self._watchers.get(key_id, ())):
            callback()

    def forget_all(self) -> None:
        self._generation += 1
        self._records.clear()
        self._negative.clear()
        for callbacks in list(self._watchers.values()):
            for callback in list(callbacks):
                callback()

    def watch(self, key_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever ``key_id`` may have changed; returns the unwatch."""
        self._watchers.setdefault(key_id, set()).add(callback)

        def unwatch() -> None:
            callbacks = self._watchers.get(key_id)
            if callbacks is not None:
                callbacks.discard(callback)
                if not callbacks:
                    del self._watchers[key_id]

        return unwatch

    # -- look-up -----------------------------------------------------------------------

    def known(self, credential: str) -> Identity | None:
        """The identity of a key this worker verified before and still holds fresh, with
        no hash and no look-up; None: :meth:`identify` decides (it also says why a key
        is refused).

        The record is found by the key's id, which is not secret; the secret is compared
        in constant time (``hmac.compare_digest``) with the one that matched the
        record's hash before. A worker keeps the secrets it verified in memory, as it
        holds every request that carries them: nothing new is exposed."""
        last, entry, generation = self._last
        if credential is last and generation == self._generation:
            # The very object that matched before (an identity test, no comparison of
            # the secret), and nothing forgotten since.
            assert entry is not None
            if entry.fresh_until <= time.monotonic():
                return None
        else:
            if len(credential) != KEY_LEN or not credential.startswith(KEY_PREFIX):
                return None
            entry = self._records.get(credential[_ID_AT : _SECRET_AT - 1])
            if entry is None or not entry.verified or entry.fresh_until <= time.monotonic():
                return None
            secret = credential[_SECRET_AT:]
            # compare_digest takes ASCII text only (a header may carry anything).
            if not secret.isascii() or not hmac.compare_digest(secret, entry.verified):
                return None
            self._last = (credential, entry, self._generation)
        identity = entry.identity
        if identity.expires_at is not None and time.time() >= identity.expires_at:
            return None
        # Not moved up the LRU order here: :meth:`identify` does, each time the record
        # is due for a refresh (every ``key_cache_s``).
        return identity

    async def identify(self, credential: str) -> Identity:
        known = self.known(credential)
        if known is not None:
            return known
        parsed = parse_key(credential)
        if parsed is None:
            raise Unauthorized("the API key is not valid")
        key_id, secret = parsed
        entry = await self._entry(key_id)
        if entry is None or not hmac.compare_digest(
            hash_secret(secret).encode(), entry.secret_hash
        ):
            raise Unauthorized("the API key is not valid")
        # Only the key's holder learns (from the message) why a valid key is refused.
        if entry.disabled:
            raise Unauthorized("this API key is disabled")
        expires_at = entry.identity.expires_at
        if expires_at is not None and time.time() >= expires_at:
            raise Unauthorized("this API key has expired")
        entry.verified = secret
        return entry.identity

    async def limits_of(self, key_id: str) -> LimitsConfig | None:
        """The current limits of the key ``key_id`` (None: none, or no such key), read
        through the cache: what a background job of the key is charged to when it runs."""
        entry = await self._entry(key_id)
        return None if entry is None else entry.identity.limits

    async def _entry(self, key_id: str) -> _Entry | None:
        now = time.monotonic()
        entry = self._records.get(key_id)
        if entry is not None and entry.fresh_until > now:
            self._records.move_to_end(key_id)
            return entry
        until = self._negative.get(key_id)
        if until is not None:
            if until > now:
                return None
            del self._negative[key_id]
        flight = self._flights.get(key_id)
        if flight is not None:
            return await asyncio.shield(flight)
        # A record this worker holds (gone stale) is refreshed freely; an id it has
        # never seen spends the budget that bounds a flood of made-up ids.
        if entry is None and not self._budget.take(now):
            raise Overloaded(
                "too many unknown API keys at once; retry shortly",
                code="auth_overloaded",
                retry_after=1,
            )
        # The look-up is a task of its own, shared by every request for the id meanwhile:
        # a requester that goes away neither cancels it for the others nor loses its
        # answer for the cache.
        flight = self._flights[key_id] = asyncio.ensure_future(
            self._read(key_id, refresh=entry is not None)
        )
        flight.add_done_callback(lambda done: self._landed(key_id, done))
        return await asyncio.shield(flight)

    def _landed(self, key_id: str, flight: asyncio.Future[_Entry | None]) -> None:
        if self._flights.get(key_id) is flight:
            del self._flights[key_id]
        if not flight.cancelled():
            flight.exception()  # retrieved: whoever awaited it got it, nobody else must

    async def _read(self, key_id: str, refresh: bool = False) -> _Entry | None:
        """``refresh``: of a record held past its time with no change heard of since, the
        only look-up a replica may answer (a changed or unknown id reads the master)."""
        generation = self._generation
        self.lookups += 1
        record = await self.keyring.get(key_id, replica=refresh)
        now = time.monotonic()
        cacheable = generation == self._generation
        if record is None:
            if cacheable:
                self._records.pop(key_id, None)
            if cacheable and self.negative_s > 0:
                self._negative[key_id] = now + self.negative_s
                while len(self._negative) > MAX_NEGATIVE:
                    self._negative.popitem(last=False)
            return None
        entry = _Entry(
            identity_of_record(record),
            record.secret_hash.encode(),
            record.disabled,
            now + self.ttl_s,
        )
        if cacheable:
            self._records[key_id] = entry
            self._records.move_to_end(key_id)
            while len(self._records) > MAX_RECORDS:
                self._records.popitem(last=False)
        return entry


class _Bucket:
    """A token bucket: ``rate`` per second, bursts of ``rate``; 0 = unbounded."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def take(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
