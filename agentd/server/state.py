"""Shared state over HTTP: versioned JSON documents at ``/v1/state/{namespace}/{key}``.

Every response that carries a document is ``{"value": ..., "version": N}`` with the
header ``ETag: "N"``. Writes take HTTP preconditions:

* ``PUT``'s body is the document itself, any JSON value. A body that is exactly what
  ``GET`` answers, ``{"value": ..., "version": N}``, is refused (400 ``state_envelope``):
  stored as is it would nest the document one level deeper on every round trip. A
  client that keeps the envelope sends it with
  ``Content-Type: application/vnd.agentd.state+json``: the body is then
  ``{"value": ...}``, stored as the value, with an optional ``"version": N`` that means
  ``If-Match: "N"``. This is also how a document of that very shape is stored.
* ``PUT`` with ``If-Match: "N"`` (or a bare ``N``) is a compare-and-set on version N;
  with ``If-None-Match: *`` it creates the document only if absent; with neither, the
  last writer wins. It answers 201 when it created the document (version 1), else 200.
* ``DELETE`` takes an optional ``If-Match``.
* A failed precondition is 412 ``version_conflict``, whose error object carries
  ``current``: ``{"value", "version"}`` of the document now, or null if there is none.

``PATCH`` takes an RFC 7386 merge patch (``Content-Type: application/merge-patch+json``)
and applies it atomically, creating the document if needed.

Extension: ``POST /v1/state/{namespace}/{key}/increment`` with ``{"path": ["a", "b"],
"by": 1}`` adds ``by`` (default 1, any JSON number) to the number at that path of the
document, atomically; missing fields and the document itself start at 0 / ``{}``. It
answers 200 with the new document. Counters need no read-modify-write round trips.

Listing (what a console browses): ``GET /v1/state?limit=N&after=NAME`` pages through the
tenant's namespaces that hold documents, by name, each ``{"object": "state.namespace",
"name", "documents"}``; ``GET /v1/state/{namespace}?limit=N&after=KEY&prefix=P`` pages
through a namespace's documents by key, each ``{"object": "state.document", "key",
"version", "size"}`` (``size``: bytes of the stored JSON). Both answer ``{"object":
"list", "data", "has_more", "next_after"}``: ``limit`` 1 to 1000 (default 100), ``after``
a previous page's ``next_after``. A namespace without documents lists empty.

PATCH takes an optional ``If-Match``: the patch applies only to that version (412 with
the current document otherwise, as for ``PUT``). Increment is atomic by itself and
refuses ``If-Match`` rather than silently ignore it.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..errors import AgentdError, BadRequest
from ..store import StateDoc, StateListing
from .http import MAX_DEPTH, json_object, json_response, query_int, read_json
from .tenancy import store_of

__all__ = ("setup",)

MERGE_PATCH = "application/merge-patch+json"
# PUT's body as {"value": ..., "version"?: N}, the shape GET answers.
ENVELOPE = "application/vnd.agentd.state+json"
_ENVELOPE_FIELDS = frozenset({"value", "version"})
# A version in If-Match: quoted (an ETag as we send it) or bare, 1 to 2**63 - 1.
_IF_MATCH = re.compile(r'"([0-9]{1,19})"|([0-9]{1,19})')
_MAX_VERSION = 2**63 - 1
_INCREMENT_FIELDS = frozenset({"path", "by"})
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _name(request: web.Request) -> tuple[str, str]:
    return request.match_info["namespace"], request.match_info["key"]


def _doc_response(doc: StateDoc, status: int = 200) -> web.Response:
    return json_response(
        {"value": doc.value, "version": doc.version},
        status=status,
        headers={"ETag": f'"{doc.version}"'},
    )


def _if_match(request: web.Request) -> int | None:
    """The version ``If-Match`` names, or None without the header; 400 if malformed."""
    text = request.headers.get("If-Match")
    if text is None:
        return None
    found = _IF_MATCH.fullmatch(text.strip())
    version = int(found.group(1) or found.group(2)) if found else 0
    if not 1 <= version <= _MAX_VERSION:
        raise BadRequest(
            'If-Match must be one version, "N" or N, from 1 to 2**63-1 '
            "(to create a document only if absent, send If-None-Match: *)",
            code="invalid_if_match",
        )
    return version


def _refuse(request: web.Request, *headers: str) -> None:
    """400 if the request carries a precondition this route does not support."""
    for header in headers:
        if header in request.headers:
            raise BadRequest(
                f"{request.method} on a state document does not take {header}",
                code="invalid_precondition",
            )


async def get_state(request: web.Request) -> web.Response:
    return _doc_response(await store_of(request).state_get(*_name(request)))


async def put_state(request: web.Request) -> web.Response:
    """Write the body as the document, under the request's precondition if any."""
    expected = _if_match(request)
    none_match = request.headers.get("If-None-Match")
    if none_match is not None:
        if expected is not None:
            raise BadRequest(
                "send If-Match or If-None-Match, not both", code="invalid_precondition"
            )
        if none_match.strip() != "*":
            raise BadRequest("If-None-Match must be *", code="invalid_precondition")
        expected = 0  # the store's "must not exist"
    value = await read_json(request)
    if request.content_type == ENVELOPE:
        value, expected = _unwrap(value, expected)
    elif _looks_like_get(value):
        raise BadRequest(
            "PUT takes the document itself as its body, and this body is what GET answers "
            '({"value", "version"}): send its "value" as the body (with If-Match: "N" to '
            f"write only over version N), or send it as is with Content-Type: {ENVELOPE}",
            code="state_envelope",
        )
    doc = await store_of(request).state_put(*_name(request), value, expected_version=expected)
    return _doc_response(doc, status=201 if doc.version == 1 else 200)


def _looks_like_get(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.keys() == _ENVELOPE_FIELDS
        and type(value["version"]) is int
    )


def _unwrap(body: Any, expected: int | None) -> tuple[Any, int | None]:
    """The value and expected version of an envelope body (``ENVELOPE``)."""
    body = json_object(body, _ENVELOPE_FIELDS)
    if "value" not in body:
        raise BadRequest(
            f'a {ENVELOPE} body is {{"value": ..., "version"?: N}}; "value" is missing',
            code="invalid_request",
        )
    if "version" not in body:
        return body["value"], expected
    version = body["version"]
    if type(version) is not int or not 1 <= version <= _MAX_VERSION:
        raise BadRequest(
            '"version" must be an integer from 1 to 2**63-1 (the version the value replaces)',
            code="invalid_request",
        )
    if expected is not None and expected != version:
        raise BadRequest(
            '"version" and the precondition header disagree; send one of them',
            code="invalid_precondition",
        )
    return body["value"], version


async def patch_state(request: web.Request) -> web.Response:
    """Apply an RFC 7386 merge patch atomically."""
    if request.content_type != MERGE_PATCH:
        raise AgentdError(
            f"PATCH takes Content-Type: {MERGE_PATCH}, got {request.content_type}",
            code="unsupported_media_type",
            status=415,
        )
    _refuse(request, "If-None-Match")
    expected = _if_match(request)
    patch = await read_json(request)
    doc = await store_of(request).state_patch(*_name(request), patch, expected_version=expected)
    return _doc_response(doc)


async def increment_state(request: web.Request) -> web.Response:
    """Add ``by`` to the number at ``path``; see the module docstring."""
    _refuse(request, "If-Match", "If-None-Match")
    body = json_object(await read_json(request), _INCREMENT_FIELDS)
    path: Any = body.get("path")
    # A string is iterable too: without this check "ab" would mean ["a", "b"].
    if not isinstance(path, list) or len(path) > MAX_DEPTH:
        raise BadRequest(
            f"path must be a list of at most {MAX_DEPTH} field names", code="invalid_path"
        )
    doc = await store_of(request).state_increment(*_name(request), path, body.get("by", 1))
    return _doc_response(doc)


async def delete_state(request: web.Request) -> web.Response:
    _refuse(request, "If-None-Match")
    expected = _if_match(request)
    await store_of(request).state_delete(*_name(request), expected_version=expected)
    return web.Response(status=204)


def _limit(request: web.Request) -> int:
    limit = query_int(request, "limit", MAX_LIMIT)
    if limit == 0:
        raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}", code="invalid_range")
    return DEFAULT_LIMIT if limit is None else limit


def _page(listing: StateListing, rows: list[dict[str, Any]]) -> web.Response:
    return json_response(
        {
            "object": "list",
            "data": rows,
            "has_more": listing.next_after is not None,
            "next_after": listing.next_after,
        }
    )


async def list_namespaces(request: web.Request) -> web.Response:
    listing = await store_of(request).list_state_namespaces(
        limit=_limit(request), after=request.query.get("after")
    )
    rows = [
        {"object": "state.namespace", "name": n.name, "documents": n.documents}
        for n in listing.data
    ]
    return _page(listing, rows)


async def list_documents(request: web.Request) -> web.Response:
    listing = await store_of(request).list_state_documents(
        request.match_info["namespace"],
        limit=_limit(request),
        after=request.query.get("after"),
        prefix=request.query.get("prefix", ""),
    )
    rows = [
        {"object": "state.document", "key": e.key, "version": e.version, "size": e.size}
        for e in listing.data
    ]
    return _page(listing, rows)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/state", list_namespaces)
    app.router.add_get("/v1/state/{namespace}", list_documents)
    app.router.add_get("/v1/state/{namespace}/{key}", get_state)
    app.router.add_put("/v1/state/{namespace}/{key}", put_state)
    app.router.add_patch("/v1/state/{namespace}/{key}", patch_state)
    app.router.add_delete("/v1/state/{namespace}/{key}", delete_state)
    app.router.add_post("/v1/state/{namespace}/{key}/increment", increment_state)
