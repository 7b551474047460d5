"""Background work for operators:

- ``GET /v1/admin/jobs``: each partition's queue depth, running jobs, oldest waiting
  job's age, retries and dead letters;
- ``GET /v1/admin/jobs/dead?partition=NAME[&limit=N&after=ID]``: a page of its dead
  letters, newest first;
- ``POST /v1/admin/jobs/dead/{id}/retry?partition=NAME``: queue the job again (its
  response goes back to ``queued``);
- ``DELETE /v1/admin/jobs/dead/{id}?partition=NAME``: discard the dead letter.

The paths need the ``admin`` scope (the middleware checks it). A retry or a discard,
done or refused, is one line on the ``agentd.audit`` logger; reading writes none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import param_error
from ..jobs.dead_letters import DeadLetterDesk, letter_dict, no_dead_letter
from ..store import DEAD_ID_RE
from .audit import Handler, audited
from .http import json_response, query_int
from .keys import CONFIG, STORE

__all__ = ("setup",)


DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _desk(request: web.Request) -> DeadLetterDesk:
    return DeadLetterDesk(request.app[CONFIG], request.app[STORE])


def _partition(request: web.Request) -> str:
    name = request.query.get("partition")
    if name is None:
        raise param_error("partition is required", "missing_required_parameter", "partition")
    known = [p.name for p in request.app[CONFIG].all_partitions()]
    if name not in known:
        raise param_error(
            f"no partition {name[:80]!r}; partitions are {', '.join(known)}",
            "unknown_partition",
            "partition",
        )
    return name


def _entry(request: web.Request, partition: str) -> str:
    entry = request.match_info["id"]
    if not DEAD_ID_RE.fullmatch(entry):
        raise no_dead_letter(partition, entry)
    return entry


async def job_figures(request: web.Request) -> web.Response:
    figures = await _desk(request).figures()
    return json_response({"object": "list", "data": [f.to_dict() for f in figures]})


async def dead_letters(request: web.Request) -> web.Response:
    partition = _partition(request)
    after = request.query.get("after")
    if after is not None and not DEAD_ID_RE.fullmatch(after):
        raise param_error("after must be a dead letter id", "invalid_cursor", "after")
    limit = query_int(request, "limit", MAX_LIMIT)
    page = await _desk(request).page(
        partition, DEFAULT_LIMIT if limit is None else max(limit, 1), after
    )
    return json_response(
        {
            "object": "list",
            "data": [letter_dict(letter) for letter in page.letters],
            "has_more": page.next_after is not None,
            "next_after": page.next_after,
        }
    )


async def retry_dead_letter(request: web.Request, facts: dict[str, str]) -> web.Response:
    partition = facts["partition"] = _partition(request)
    entry = _entry(request, partition)
    _, rid = await _desk(request).retry(partition, entry)
    facts["response"] = rid
    return json_response(
        {"id": entry, "partition": partition, "response_id": rid, "status": "queued"}
    )


async def discard_dead_letter(request: web.Request, facts: dict[str, str]) -> web.Response:
    partition = facts["partition"] = _partition(request)
    entry = _entry(request, partition)
    letter = await _desk(request).discard(partition, entry)
    facts["response"] = letter_dict(letter)["response_id"]
    return json_response({"id": entry, "deleted": True})


def _audited(action: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    return audited(
        action,
        handler,
        lambda r: {"id": r.match_info.get("id", "")[:80], "partition": "", "response": ""},
        lambda f: (
            f"dead_letter={f['id'] or '-'} partition={f['partition']!r} "
            f"response={f['response'] or '-'}"
        ),
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/admin/jobs", job_figures)
    app.router.add_get("/v1/admin/jobs/dead", dead_letters)
    app.router.add_post(
        "/v1/admin/jobs/dead/{id}/retry", _audited("dead_letter.retry", retry_dead_letter)
    )
    app.router.add_delete(
        "/v1/admin/jobs/dead/{id}", _audited("dead_letter.discard", discard_dead_letter)
    )
