"""OpenAI's Responses API on the wire: the create request (:mod:`.request`, its field
tables in :mod:`.fields`), the response object (:mod:`.objects`) and its streaming
events (:mod:`.events`)."""

from __future__ import annotations

from .events import TERMINAL_EVENTS, ResponseEvents, event_frame
from .fields import MAX_CONTENT_PARTS
from .objects import (
    ResponseView,
    input_items,
    message_item_id,
    new_response_id,
    response_object,
)
from .request import CreateRequest, parse_create

__all__ = (
    "MAX_CONTENT_PARTS",
    "TERMINAL_EVENTS",
    "CreateRequest",
    "ResponseEvents",
    "ResponseView",
    "event_frame",
    "input_items",
    "message_item_id",
    "new_response_id",
    "parse_create",
    "response_object",
)
