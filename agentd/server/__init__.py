"""The HTTP surface: the aiohttp application, its middlewares and routes."""

from .app import create_app
from .keys import WorkerInfo, tracked_websocket

__all__ = ("WorkerInfo", "create_app", "tracked_websocket")
