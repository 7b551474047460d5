"""A response's record in the store (the fields of the store's ``Records``) read as a
:class:`ResponseView`, and the fields its result writes; shared by the Responses API's
logic (``service``) and a job's attempt (``attempt``)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..auth import Identity
from ..wire.responses import CreateRequest, ResponseView

__all__ = ("payer_of", "result_fields", "view_of")


def view_of(rid: str, record: dict[str, bytes]) -> ResponseView:
    """The record's fields as a :class:`ResponseView`."""

    def text(name: str) -> str | None:
        value = record.get(name)
        return None if value is None else value.decode()

    def doc(name: str) -> Any:
        value = record.get(name)
        return None if value is None else orjson.loads(value)

    done = record.get("done")
    status = text("status") or "queued"
    return ResponseView(
        id=rid,
        created_at=float(record.get("created", b"0")),
        status=status,
        request=CreateRequest.from_json(record["req"]),
        output_text=text("text"),
        usage=doc("usage"),
        error=doc("error"),
        incomplete_reason=text("inc"),
        session_id=text("sid"),
        completed_at=float(done) if done else None,
        items=doc("items"),
        message_at=int(record["mat"]) if "mat" in record else None,
    )


def payer_of(record: dict[str, bytes]) -> Identity | None:
    """Who a background response is charged to when it runs (its ``payer`` field: the
    tenant, the credential's kind and key id; the key's limits are looked up when it
    runs, :meth:`agentd.auth.Limiter.payer`); None for no one."""
    raw = record.get("payer")
    if not raw:
        return None
    tenant, kind, key_id = raw.decode().split("\n", 2)
    return Identity(tenant=tenant, scopes=frozenset(), kind=kind, key_id=key_id)


def result_fields(view: ResponseView, reply_seq: int | None) -> dict[str, bytes]:
    fields = {"status": view.status.encode(), "done": b"%f" % time.time()}
    if view.output_text is not None:
        fields["text"] = view.output_text.encode()
    if view.usage is not None:
        fields["usage"] = orjson.dumps(view.usage)
    if view.error is not None:
        fields["error"] = orjson.dumps(view.error)
    if view.incomplete_reason:
        fields["inc"] = view.incomplete_reason.encode()
    if reply_seq is not None:
        fields["rseq"] = b"%d" % reply_seq
    if view.items is not None:
        fields["items"] = orjson.dumps(view.items)
    if view.message_at is not None:
        fields["mat"] = b"%d" % view.message_at
    return fields
