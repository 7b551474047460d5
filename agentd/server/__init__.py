"""The HTTP surface: the aiohttp application, its middlewares and routes."""

from .app import check_startup, create_app
from .keys import tracked_websocket

__all__ = ("check_startup", "create_app", "tracked_websocket")
