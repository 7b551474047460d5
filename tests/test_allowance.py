"""A caller's allowance (agentd/auth/allowance.py): admissions taken from the worker's
leases in batches. It stops at once when tokens charged bring a lease to its headroom,
a turn still running when its allowance is retired gives its slot back to the lease,
and the headers it keeps as lines read as the mapping they render. Real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentd.auth import Identity, Limiter, Rendered, header_lines
from agentd.auth.leases import MARGIN
from agentd.auth.limits import Leased
from agentd.config import from_dict
from agentd.store import open_store

from .procs import RedisServer
from .test_limits import key_identity
from .waiting import wait_until

TPM = 10**6
BIG = {"requests_per_minute": 10**9, "max_concurrent_turns": 100_000}


@pytest.fixture
async def limiter(redis_standalone: RedisServer) -> AsyncIterator[Limiter]:
    config = from_dict(
        {
            "redis": {"urls": [redis_standalone.url]},
            "auth": {"tenant_limits": {**BIG, "tokens_per_minute": TPM}},
        }
    )
    store = open_store(config)
    await store.start()
    limiter = Limiter(config, store.limits)
    yield limiter
    await limiter.close()
    await store.close()


async def _leased(limiter: Limiter, identity: Identity) -> Leased:
    """A request of ``identity`` admitted on its allowance (the leases granted first)."""

    async def one() -> Any:
        ticket = limiter.begin(identity)
        assert ticket is not None
        await ticket.admitted()
        if isinstance(ticket, Leased):
            return ticket
        ticket.settle(ran=False)
        await wait_until(
            lambda: not (limiter._next or limiter._calls or limiter.leases._calls),
            what="the limiter's calls answered",
        )
        return None

    return await wait_until(one, what="a request admitted on its allowance")  # type: ignore[no-any-return]


async def test_tokens_charged_to_the_headroom_stop_the_allowance_at_once(
    limiter: Limiter,
) -> None:
    """Within 1/MARGIN of the token bucket every request is checked by the store: the
    places an allowance still holds do not admit another one after the charge."""
    identity = key_identity(**BIG)
    first = await _leased(limiter, identity)
    assert first.allowance.left > 0  # places left that would admit the next request
    first.settle({"prompt_tokens": TPM - TPM // MARGIN, "completion_tokens": 0}, "miss")
    after = limiter.begin(identity)
    assert after is not None and not isinstance(after, Leased)
    await after.admitted()
    after.settle(ran=False)


async def test_a_turn_running_when_its_allowance_is_retired_frees_its_slot(
    limiter: Limiter,
) -> None:
    identity = key_identity(**BIG)
    running = await _leased(limiter, identity)
    # Anything about the leases changes: the next request takes a new allowance and
    # the running turn's goes back, but for the slot the turn still holds.
    limiter.leases.version += 1
    later = limiter.begin(identity)
    assert isinstance(later, Leased) and later.allowance is not running.allowance
    assert running.allowance.retired
    conc = running.allowance.conc
    assert conc and all(lease.busy >= 1 for lease in conc)
    running.settle(None, "hit-l1")
    later.settle(ran=False)
    limiter._retire_all()
    assert [lease.busy for lease in conc] == [0] * len(conc)


async def test_the_headers_an_allowance_keeps_read_as_what_they_render(
    limiter: Limiter,
) -> None:
    identity = key_identity(**BIG)
    ticket = await _leased(limiter, identity)
    headers = ticket.headers
    assert type(headers) is Rendered and headers
    as_dict = dict(headers)
    assert header_lines(headers) == header_lines(as_dict)
    assert set(as_dict) == {
        f"x-ratelimit-{what}-{kind}"
        for what in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    }
    left = int(as_dict["x-ratelimit-remaining-requests"])
    following = limiter.begin(identity)
    assert isinstance(following, Leased) and following.allowance is ticket.allowance
    assert int(following.headers["x-ratelimit-remaining-requests"]) == left - 1
    ticket.settle(ran=False)
    following.settle(ran=False)
    assert not Rendered(b"", 0, b"") and dict(Rendered(b"", 0, b"")) == {}
    tokens_only = Rendered(b"", 7, b"x-ratelimit-limit-tokens: 5\r\n")
    assert dict(tokens_only) == {"x-ratelimit-limit-tokens": "5"}


async def test_allowances_left_behind_are_retired_and_the_idle_leases_given_back(
    limiter: Limiter,
) -> None:
    """An identity replaced by its key's record read again leaves its allowance behind,
    and a caller gone quiet keeps one: both are retired once their life ends, so the
    places and slots they hold go back and the unused leases are given back."""
    first = await _leased(limiter, key_identity(**BIG))
    first.settle(None, "hit-l1")
    again = await _leased(limiter, key_identity(**BIG))  # a new object of the same key
    again.settle(None, "hit-l1")
    await wait_until(lambda: not limiter.leases._tenants, limit=30, what="the leases given back")
    assert not limiter._allowed


async def test_a_connection_token_s_request_takes_one_place_and_keeps_no_allowance(
    limiter: Limiter,
) -> None:
    """A connection token's identity is made anew for each request: its allowance is for
    that request alone, so nothing is held for an identity never seen again."""

    def token() -> Identity:
        return Identity(tenant="acme", scopes=frozenset({"chat"}), kind="token", key_id="t")

    first = await _leased(limiter, token())
    first.settle(None, "hit-l1")
    leases = first.allowance.leases
    left = [lease.left for lease in leases]
    for _ in range(5):
        ticket = limiter.begin(token())
        assert isinstance(ticket, Leased) and ticket.allowance.retired
        ticket.settle(None, "hit-l1")
    assert not limiter._allowed
    assert [lease.left for lease in leases] == [n - 5 for n in left]
    assert all(lease.busy == 0 for lease in leases if lease.conc)
