"""The HTTP surface: the aiohttp application, its middlewares and routes."""

from .app import check_startup, create_app, preload
from .front import front_for
from .keys import tracked_websocket

__all__ = ("check_startup", "create_app", "front_for", "preload", "tracked_websocket")
