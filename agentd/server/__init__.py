"""The HTTP surface: the aiohttp application, its middlewares and routes."""

from .app import create_app
from .keys import tracked_websocket

__all__ = ("create_app", "tracked_websocket")
