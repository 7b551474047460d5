"""What ``parse_create`` does with each field of a Responses create request: the
top-level fields it uses, restricts, ignores or rejects, the fields an input item and a
content part may carry, and OpenAI's limits. Data only."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ...errors import param_error
from ...fastpath import CHAT_PARAMS, MAX_MESSAGES
from ...schema import MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE

__all__ = (
    "IGNORED_FIELDS",
    "ITEM_FIELDS",
    "MAX_CONTENT_PARTS",
    "MAX_ID_CHARS",
    "MAX_METADATA",
    "MAX_METADATA_KEY",
    "MAX_METADATA_VALUE",
    "OWN_FIELDS",
    "PARAM_FIELDS",
    "PART_FIELDS",
    "REJECTED_FIELDS",
    "RESTRICTED_FIELDS",
    "TEXT_FIELDS",
    "TEXT_PARTS",
    "Kinds",
)

# -- what parse_create does with each top-level field -----------------------------------
#
# A field in no table is a 400 ``unknown_parameter``, as the chat API refuses unknown
# fields: a typo must not pass silently. ``model``, ``input``, ``instructions``,
# ``previous_response_id``, ``metadata``, ``background``, ``stream`` and ``session_id``
# (agentd's extension) have their own fields in CreateRequest.

Kinds = tuple[type, ...]

# Generation parameters: Responses name -> (chat-completions name, accepted JSON types).
# From "stop" to "logit_bias": agentd extensions, chat-completions parameters the chat
# API forwards. ``reasoning.effort`` and ``text.verbosity`` are forwarded too, as the chat
# API's ``reasoning_effort`` and ``verbosity`` (``parse_create``).
PARAM_FIELDS: MappingProxyType[str, tuple[str, Kinds]] = MappingProxyType(
    {
        "temperature": ("temperature", (int, float)),
        "top_p": ("top_p", (int, float)),
        "max_output_tokens": ("max_tokens", (int,)),
        "user": ("user", (str,)),
        **{
            name: (name, CHAT_PARAMS[name])
            for name in (
                "stop",
                "seed",
                "presence_penalty",
                "frequency_penalty",
                "logit_bias",
                "service_tier",
                "safety_identifier",
                "prompt_cache_key",
                "prompt_cache_retention",
                "prompt_cache_options",
            )
        },
    }
)
# Accepted only with the values that ask for nothing agentd lacks; any other value is
# ``unsupported_value``, because ignoring it would change what the reply means.
RESTRICTED_FIELDS: MappingProxyType[str, str] = MappingProxyType(
    {
        "tools": "mcp tools (.mcp) and function tools (.functions): no other kind",
        "tool_choice": '"auto", "none", "required" (with tools) or a function tool',
        "text": 'format null or {"type": "text"}: no structured output',
    }
)
# Accepted (type-checked) and ignored: hints whose absence cannot change what the reply
# says, only how it is produced or what extras come with it.
IGNORED_FIELDS: MappingProxyType[str, Kinds] = MappingProxyType(
    {
        "include": (list,),
        "truncation": (str,),
        "parallel_tool_calls": (bool,),  # forwarded with function tools (.functions)
        "max_tool_calls": (int,),
        "top_logprobs": (int,),
        "stream_options": (dict,),
        "background_options": (dict,),
        "image": (dict,),
    }
)
# Rejected whatever their value (``unsupported_parameter``): not implemented, and each
# would change what the model sees or what may be returned.
REJECTED_FIELDS = frozenset({"prompt", "moderation", "context_management", "access_programs"})
OWN_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "previous_response_id",
        "metadata",
        "background",
        "stream",
        "store",
        "session_id",
        "conversation",  # a conversation id, or {"id": ...}: the session it names
        "reasoning",  # its effort is forwarded as reasoning_effort
    }
)

TEXT_PARTS = frozenset({"input_text", "output_text"})
# Fields an input message may carry: those the SDK writes when a client sends back a
# previous response's output items (id, status, phase) are accepted and ignored.
ITEM_FIELDS = frozenset({"type", "role", "content", "id", "status", "phase"})
PART_FIELDS = frozenset({"type", "text", "annotations", "logprobs", "prompt_cache_breakpoint"})
TEXT_FIELDS = frozenset({"format", "verbosity"})
MAX_CONTENT_PARTS = MAX_MESSAGES
MAX_ID_CHARS = 256


def typed_object(value: Any, at: str) -> tuple[dict[str, Any], str]:
    """An input part, item or tool: an object with a string ``type``; both (400 naming
    ``at`` otherwise)."""
    if not isinstance(value, dict):
        raise param_error(f"{at} must be an object", "invalid_type", at)
    kind = value.get("type")
    if kind is None:
        raise param_error(f"{at}.type is required", "missing_required_parameter", f"{at}.type")
    if not isinstance(kind, str):
        raise param_error(f"{at}.type must be a string", "invalid_type", f"{at}.type")
    return value, kind
