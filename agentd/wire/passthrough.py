"""The requests of the pass-through endpoints, ``POST /v1/embeddings`` and
``POST /v1/completions`` (legacy), as agentd reads them. Pure: no I/O.

Each field of OpenAI's request is checked for its JSON type (so a backend never sees a
mistyped one) and the fields go to the backend as given; ``model`` names an agent, as
in the chat APIs. Errors are the Responses API's, with ``param`` naming the field:
``invalid_json``, ``invalid_request`` (not an object), ``missing_required_parameter``,
``invalid_type``, ``invalid_value`` and ``unknown_parameter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..client_json import loads_json
from ..errors import BadRequest, unknown_parameter
from ..errors import param_error as _bad
from .responses.fields import Kinds
from .responses.request import check_type

__all__ = (
    "COMPLETION_FIELDS",
    "EMBEDDING_FIELDS",
    "MAX_INPUT_ITEMS",
    "MAX_N",
    "EmbeddingsBody",
    "TextBody",
    "parse_completions",
    "parse_embeddings",
)

# OpenAI's limit on the items of one embeddings input (and on prompts of a completion).
MAX_INPUT_ITEMS = 2048
# Choices per prompt of one completion.
MAX_N = 128

_NUMBER: Kinds = (int, float)

# The fields besides model and input/prompt, with their JSON types.
EMBEDDING_FIELDS: dict[str, Kinds] = {
    "dimensions": (int,),
    "encoding_format": (str,),
    "user": (str,),
}
COMPLETION_FIELDS: dict[str, Kinds] = {
    "best_of": (int,),
    "echo": (bool,),
    "frequency_penalty": _NUMBER,
    "logit_bias": (dict,),
    "logprobs": (int,),
    "max_tokens": (int,),
    "n": (int,),
    "presence_penalty": _NUMBER,
    "seed": (int,),
    "stop": (str, list),
    "stream": (bool,),
    "stream_options": (dict,),
    "suffix": (str,),
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "user": (str,),
}
ENCODINGS = ("float", "base64")


@dataclass(slots=True)
class EmbeddingsBody:
    """A validated embeddings request."""

    agent: str
    input: Any  # str | list[str] | list[int] | list[list[int]]
    encoding: str  # "float" or "base64": how the vectors are sent back
    params: dict[str, Any] = field(default_factory=dict)  # dimensions, encoding_format, user


@dataclass(slots=True)
class TextBody:
    """A validated legacy completions request (``stream``/``stream_options`` read out)."""

    agent: str
    prompt: Any
    stream: bool
    include_usage: bool
    params: dict[str, Any] = field(default_factory=dict)


def _object(raw: bytes) -> dict[str, Any]:
    body = loads_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_request")
    return body


def _agent(body: dict[str, Any]) -> str:
    agent = body.get("model")
    if agent is None:
        raise _bad("model is required: the name of an agent", "missing_required_parameter", "model")
    if not check_type(agent, (str,), "model"):
        raise _bad("model must name an agent", "invalid_value", "model")
    return agent


def _params(body: dict[str, Any], fields: dict[str, Kinds], own: tuple[str, ...]) -> dict[str, Any]:
    """The typed optional fields that are not null; ``unknown_parameter`` for the rest."""
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in own:
            continue
        kinds = fields.get(key)
        if kinds is None:
            raise unknown_parameter(key)
        if check_type(value, kinds, key) is not None:
            params[key] = value
    return params


def _tokens(value: list[Any]) -> bool:
    """Whether ``value`` is a list of token ids (non-negative integers)."""
    return all(type(t) is int and t >= 0 for t in value)


def _text_input(value: Any, param: str, *, allow_empty: bool) -> Any:
    """A string, strings, token ids or lists of token ids; ``invalid_value`` otherwise."""
    if value is None:
        raise _bad(f"{param} is required", "missing_required_parameter", param)
    if isinstance(value, str):
        if not value and not allow_empty:
            raise _bad(f"{param} must not be empty", "invalid_value", param)
        return value
    if not isinstance(value, list) or not value:
        raise _bad(
            f"{param} must be a string, or a non-empty array of strings, token ids or arrays "
            "of token ids",
            "invalid_type" if not isinstance(value, list) else "invalid_value",
            param,
        )
    if len(value) > MAX_INPUT_ITEMS:
        raise _bad(f"{param} has more than {MAX_INPUT_ITEMS} items", "invalid_value", param)
    if all(isinstance(v, str) for v in value):
        if not allow_empty and not all(value):
            raise _bad(f"{param} must not hold empty strings", "invalid_value", param)
        return value
    if _tokens(value):
        return value
    if all(isinstance(v, list) and v and _tokens(v) for v in value):
        return value
    raise _bad(
        f"{param} must be a string, or an array of strings, token ids (integers >= 0) or "
        "non-empty arrays of token ids, not a mix",
        "invalid_value",
        param,
    )


def _positive(params: dict[str, Any], key: str, maximum: int | None = None) -> None:
    value = params.get(key)
    if value is not None and (value < 1 or (maximum is not None and value > maximum)):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise _bad(f"{key} must be at least 1{bound}", "invalid_value", key)


def parse_embeddings(raw: bytes) -> EmbeddingsBody:
    """Parse and validate a ``POST /v1/embeddings`` body; :class:`BadRequest` if bad."""
    body = _object(raw)
    params = _params(body, EMBEDDING_FIELDS, ("model", "input"))
    agent = _agent(body)
    value = _text_input(body.get("input"), "input", allow_empty=False)
    _positive(params, "dimensions")
    encoding = params.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise _bad("encoding_format must be float or base64", "invalid_value", "encoding_format")
    return EmbeddingsBody(agent, value, encoding, params)


def parse_completions(raw: bytes) -> TextBody:
    """Parse and validate a ``POST /v1/completions`` body; :class:`BadRequest` if bad.
    A null prompt is the empty prompt."""
    body = _object(raw)
    params = _params(body, COMPLETION_FIELDS, ("model", "prompt"))
    agent = _agent(body)
    if "prompt" not in body:
        raise _bad("prompt is required", "missing_required_parameter", "prompt")
    prompt = body["prompt"]
    prompt = "" if prompt is None else _text_input(prompt, "prompt", allow_empty=True)
    _positive(params, "n", MAX_N)
    _positive(params, "best_of", MAX_N)
    if params.get("max_tokens", 0) < 0:
        raise _bad("max_tokens must be at least 0", "invalid_value", "max_tokens")
    stop = params.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise _bad("stop must be a string or an array of strings", "invalid_type", "stop")
    stream = bool(params.pop("stream", False))
    options = params.pop("stream_options", None) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _bad(
            "stream_options.include_usage must be a boolean",
            "invalid_type",
            "stream_options.include_usage",
        )
    return TextBody(agent, prompt, stream, include_usage, params)
