"""The scripts of owned locks and the response cache's single-flights: a lock renewed
or released only by its owner, a flight's stream of events."""

from __future__ import annotations

from .script import Script

# KEYS: lock, and optionally what lives with it (a flight's stream). ARGV: owner, ttl ms.
# Renews only the owner's lock (and the rest with it): 1, else 0.
RENEW_LOCK = Script(
    "renew_lock",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[2]) end
return 1
""",
)

# KEYS: lock, flight stream. ARGV: owner, ttl ms. Deletes only the owner's lock, and
# then says so on the stream in the same step: its followers learn at once that the
# flight ended (after its reply, or with none to give) instead of when their blocking
# read times out, and no new leader's stream (LEAD empties it) can get the word.
RELEASE_LOCK = Script(
    "release_lock",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], '*', 'gone', '')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
""",
)

# KEYS: flight stream. ARGV: ttl ms, then field/value pairs. Appends and keeps it short-lived.
EMIT = Script(
    "emit",
    """
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
""",
)

# KEYS: lock, flight stream. ARGV: owner, ttl ms. Takes the single-flight lock unless
# held, and then empties the stream a previous flight of the same key may have left.
LEAD = Script(
    "lead",
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('DEL', KEYS[2])
return 1
""",
)
