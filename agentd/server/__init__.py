"""The HTTP surface: the aiohttp application, its middlewares and routes."""

from .app import create_app, tracked_websocket
from .keys import WorkerInfo

__all__ = ("WorkerInfo", "create_app", "tracked_websocket")
