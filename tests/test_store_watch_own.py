"""A reader's own turns (``Watch.own``), on every store topology: their messages count
as read and are never given to it, alone or beside others' in one event, and the
messages after them come with no gap and no duplicate."""

from __future__ import annotations

from typing import Any

from agentd.store import Store

from .store_helpers import assert_nothing_pending, new_session, next_event, seqs


def said(text: str, turn: str) -> dict[str, Any]:
    return {"role": "user", "content": text, "turn": turn}


async def test_a_readers_own_turns_are_read_and_never_given(store: Store) -> None:
    sid = await new_session(store)
    events = await store.open_watch(sid)
    try:
        events.own("t_mine")
        events.own("t_both")
        events.own("t_failed")
        events.disown("t_failed")  # stored nothing: a message naming it is anyone's
        await store.append(sid, [said("1", "t_other")])
        assert seqs((await next_event(events)).messages) == [1]
        await store.append(sid, [said("2", "t_mine"), said("3", "t_mine")])  # read, unseen
        await store.append(sid, [said("4", "t_both"), said("5", "t_other")])
        assert seqs((await next_event(events)).messages) == [5]
        # Their ids are done with: the same ids again are anyone's messages.
        await store.append(sid, [said("6", "t_mine"), said("7", "t_failed")])
        assert seqs((await next_event(events)).messages) == [6, 7]
        await assert_nothing_pending(store, sid, events)
    finally:
        await events.aclose()


async def test_an_own_turn_read_from_history_is_left_out(store: Store) -> None:
    """A reader resuming from history drops its own turns there too."""
    sid = await new_session(store, "0")
    await store.append(sid, [said("2", "t_mine"), said("3", "t_mine")])
    await store.append(sid, [said("4", "t_other")])
    events = await store.open_watch(sid, after=0)
    try:
        events.own("t_mine")
        assert seqs((await next_event(events)).messages) == [1, 4]
        await store.append(sid, [said("5", "t_other")])
        assert seqs((await next_event(events)).messages) == [5]
        await assert_nothing_pending(store, sid, events)
    finally:
        await events.aclose()
