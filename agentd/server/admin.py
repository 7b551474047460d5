"""The admin API for API keys: ``/v1/admin/keys``.

- ``POST /v1/admin/keys`` ``{"tenant", "name"?, "scopes"?, "agents"?, "limits"?,
  "expires_at"?}`` → 201 ``{"key", "id", "record"}``: the key is shown this once.
- ``GET /v1/admin/keys[?tenant=T&limit=N&after=ID]``: a page of records in id order.
- ``GET /v1/admin/keys/{id}``, ``PATCH`` (``name``, ``scopes``, ``agents``, ``limits``,
  ``disabled``, ``expires_at``), ``DELETE`` (revoke).

The path needs the ``admin`` scope (the middleware checks it). The ``admin`` scope is the
operator's: only keys of the operator's tenant ``""`` may hold it, so whoever calls this
API (the admin key from the environment, or such a key) acts for every tenant, and no
tenant's key can mint keys. Everything is validated before anything is written; every
action, refused or done, is one line on the ``agentd.audit`` logger (never the key).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..auth import KEY_ID_RE, new_key
from ..config import SCOPES, TENANT_RE, Config, LimitsConfig
from ..errors import AgentdError, NotFound, invalid_type, param_error, unknown_parameter
from ..store import KEY_UPDATABLE, KeyRecord
from .audit import Handler, audited
from .http import json_response, query_int, read_json
from .keys import AUTH, CONFIG, STORE

__all__ = ("DEFAULT_SCOPES", "setup")


DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_NAME = 200
# A new key's scopes unless given: everything but administration.
DEFAULT_SCOPES = tuple(s for s in SCOPES if s != "admin")
_CREATE_FIELDS = frozenset({"tenant", "name", "scopes", "agents", "limits", "expires_at"})
_UPDATE_FIELDS = KEY_UPDATABLE
_LIMITS = {f.name: f for f in dataclasses.fields(LimitsConfig)}


# -- validation: each returns the clean value or raises a 400 naming the field ----------


def _object(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise param_error("the body must be a JSON object", "invalid_type", None)
    for name in body:
        if name not in allowed:
            raise unknown_parameter(name)
    return body


def _tenant(value: Any, param: str = "tenant") -> str:
    if not isinstance(value, str):
        raise invalid_type(param, (str,))
    if value and not TENANT_RE.fullmatch(value):
        raise param_error(
            f"{param} must be 1-64 of a-z, 0-9, _ and -, starting with a letter or digit "
            f'(or "", the operator\'s tenant); got {value[:80]!r}',
            "invalid_tenant",
            param,
        )
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_type("name", (str,))
    if len(value) > MAX_NAME:
        raise param_error(f"name must be at most {MAX_NAME} characters", "invalid_name", "name")
    return value


def _scopes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise param_error("scopes must be an array of strings", "invalid_type", "scopes")
    for scope in value:
        if scope not in SCOPES:
            raise param_error(
                f"unknown scope {scope[:80]!r}; scopes are {', '.join(SCOPES)}",
                "unknown_scope",
                "scopes",
            )
    return tuple(s for s in SCOPES if s in value)  # canonical order, no repeats


def _agents(value: Any, config: Config) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise param_error("agents must be null or an array of strings", "invalid_type", "agents")
    known = {a.name for a in config.agents}
    for agent in value:
        if agent not in known:
            raise param_error(f"no agent named {agent[:80]!r}", "unknown_agent", "agents")
    return tuple(sorted(set(value)))


def _limits(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise invalid_type("limits", (dict,))
    limits: dict[str, int] = {}
    for name, number in value.items():
        spec = _LIMITS.get(name)
        if spec is None:
            raise param_error(
                f"unknown limit {name[:80]!r}; limits are {', '.join(_LIMITS)}",
                "unknown_limit",
                f"limits.{name[:80]}",
            )
        top = spec.metadata["max"]
        if type(number) is not int or not 0 <= number <= top:
            raise param_error(
                f"limits.{name} must be an integer from 0 to {top}",
                "invalid_limit",
                f"limits.{name}",
            )
        if number:  # 0 = no limit: not stored
            limits[name] = number
    return limits


def _expires_at(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise param_error(
            "expires_at must be null or Unix seconds", "invalid_expires_at", "expires_at"
        )
    if value <= time.time():
        raise param_error("expires_at must be in the future", "invalid_expires_at", "expires_at")
    return float(value)


def _disabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid_type("disabled", (bool,))
    return value


def _check_admin_scope(scopes: tuple[str, ...], tenant: str) -> None:
    if "admin" in scopes and tenant:
        raise param_error(
            'the admin scope acts for every tenant: only keys of the operator\'s tenant ("") '
            "may hold it",
            "admin_scope_not_allowed",
            "scopes",
        )


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["id"]
    if not KEY_ID_RE.fullmatch(key_id):
        raise _no_key(key_id)
    return key_id


def _no_key(key_id: str) -> NotFound:
    return NotFound(f"no API key with id {key_id[:80]!r}", code="key_not_found")


# -- audit -------------------------------------------------------------------------------


def _audited(action: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    # The handler fills in the key id and tenant as it learns them.
    return audited(
        action,
        handler,
        lambda request: {"key_id": request.match_info.get("id", "")[:80], "tenant": ""},
        lambda facts: f"key={facts['key_id'] or '-'} tenant={facts['tenant']!r}",
    )


# -- handlers ----------------------------------------------------------------------------


async def create_key(request: web.Request, facts: dict[str, str]) -> web.Response:
    config = request.app[CONFIG]
    body = _object(await read_json(request), _CREATE_FIELDS)
    if "tenant" not in body:
        raise param_error("tenant is required", "missing_required_parameter", "tenant")
    tenant = facts["tenant"] = _tenant(body["tenant"])
    scopes = _scopes(body["scopes"]) if "scopes" in body else DEFAULT_SCOPES
    _check_admin_scope(scopes, tenant)
    made = new_key()
    record = KeyRecord(
        id=made.id,
        tenant=tenant,
        secret_hash=made.secret_hash,
        name=_name(body.get("name", "")),
        scopes=scopes,
        agents=_agents(body.get("agents"), config),
        limits=_limits(body.get("limits", {})),
        created_at=time.time(),
        expires_at=_expires_at(body.get("expires_at")),
    )
    facts["key_id"] = made.id
    if not await request.app[STORE].keyring.create(record):
        # 64 random bits met an existing id: nothing was written; asking again will do.
        raise AgentdError("key id collision; retry", code="key_id_taken", status=409)
    # This worker may remember the id as unknown: forget that now (others hear the
    # store's change feed, or their negative entry ends within auth.negative_cache_s).
    request.app[AUTH].keys.forget(made.id)
    return json_response(
        {"key": made.key, "id": made.id, "record": record.to_dict()},
        status=201,
        headers={"Location": f"/v1/admin/keys/{made.id}"},
    )


async def list_keys(request: web.Request, facts: dict[str, str]) -> web.Response:
    tenant = request.query.get("tenant")
    if tenant is not None:
        facts["tenant"] = _tenant(tenant)
    after = request.query.get("after")
    if after is not None and not KEY_ID_RE.fullmatch(after):
        raise param_error("after must be a key id", "invalid_cursor", "after")
    limit = query_int(request, "limit", MAX_LIMIT)
    page = await request.app[STORE].keyring.list(
        tenant, limit=DEFAULT_LIMIT if limit is None else max(limit, 1), after=after
    )
    return json_response(
        {
            "object": "list",
            "data": [r.to_dict() for r in page.keys],
            "has_more": page.next_after is not None,
            "next_after": page.next_after,
        }
    )


async def get_key(request: web.Request, facts: dict[str, str]) -> web.Response:
    key_id = _key_id(request)
    record = await request.app[STORE].keyring.get(key_id)
    if record is None:
        raise _no_key(key_id)
    facts["tenant"] = record.tenant
    return json_response(record.to_dict())


async def update_key(request: web.Request, facts: dict[str, str]) -> web.Response:
    key_id = _key_id(request)
    body = _object(await read_json(request), _UPDATE_FIELDS)
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _name(body["name"])
    if "scopes" in body:
        changes["scopes"] = _scopes(body["scopes"])
    if "agents" in body:
        changes["agents"] = _agents(body["agents"], request.app[CONFIG])
    if "limits" in body:
        changes["limits"] = _limits(body["limits"])
    if "disabled" in body:
        changes["disabled"] = _disabled(body["disabled"])
    if "expires_at" in body:
        changes["expires_at"] = _expires_at(body["expires_at"])
    keyring = request.app[STORE].keyring
    current = await keyring.get(key_id)
    if current is None:
        raise _no_key(key_id)
    facts["tenant"] = current.tenant  # a key's tenant never changes
    if "scopes" in changes:
        _check_admin_scope(changes["scopes"], current.tenant)
    record = await keyring.update(key_id, changes)
    if record is None:  # revoked in between
        raise _no_key(key_id)
    request.app[AUTH].keys.forget(key_id)
    return json_response(record.to_dict())


async def revoke_key(request: web.Request, facts: dict[str, str]) -> web.Response:
    key_id = _key_id(request)
    record = await request.app[STORE].keyring.delete(key_id)
    if record is None:
        raise _no_key(key_id)
    facts["tenant"] = record.tenant
    request.app[AUTH].keys.forget(key_id)
    return json_response({"id": key_id, "object": "api_key", "deleted": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/admin/keys", _audited("key.create", create_key))
    app.router.add_get("/v1/admin/keys", _audited("key.list", list_keys))
    app.router.add_get("/v1/admin/keys/{id}", _audited("key.show", get_key))
    app.router.add_patch("/v1/admin/keys/{id}", _audited("key.update", update_key))
    app.router.add_delete("/v1/admin/keys/{id}", _audited("key.revoke", revoke_key))
