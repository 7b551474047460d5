"""In-process channels: what Redis pub/sub is to the Redis store."""

from __future__ import annotations

from ..api import Subscription

__all__ = ("Channels",)


class _Feed(Subscription):
    __slots__ = ("_channels", "_name")

    def __init__(self, channels: Channels, name: str) -> None:
        super().__init__()
        self._channels = channels
        self._name = name

    async def close(self) -> None:
        self._channels.leave(self._name, self)


class Channels:
    """Named channels, each fanning what is sent on it out to its subscribers."""

    def __init__(self) -> None:
        self._feeds: dict[str, set[_Feed]] = {}

    def subscribe(self, name: str) -> Subscription:
        feed = _Feed(self, name)
        self._feeds.setdefault(name, set()).add(feed)
        return feed

    def leave(self, name: str, feed: _Feed) -> None:
        feeds = self._feeds.get(name)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self._feeds[name]

    def send(self, name: str, payload: bytes) -> None:
        for feed in self._feeds.get(name, ()):
            feed.deliver(payload)
