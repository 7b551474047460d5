"""Shared state documents, as every implementation does them: names checked, values
encoded with a size limit, merge patch and increment as compare-and-set retries over
three atomic primitives (read, conditional write, conditional remove), and the listing
of namespaces and documents over an index of names.

The index holds names only, in name order, so it changes when a document is created
(version 1) or deleted, never when one is updated. It is written after the document and
cleaned after it, on another slot: a listing may meet a key whose document is gone (a
delete racing a create); it leaves it out and removes it, then looks at the document
again and puts the key back if it was created meanwhile. A delete does the same, so a
create racing it is never left out of the index."""

from __future__ import annotations

import abc
import asyncio
import math
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ..errors import BadRequest, Conflict, NotFound
from ..schema import NAME_RE, validate_name
from .api import StateConflict, StateDoc, StateEntry, StateListing, StateNamespace, Store
from .codec import dumps_limited

__all__ = ("MAX_CAS_ATTEMPTS", "StateStore", "increment", "merge_patch")

# A read-modify-write of shared state retries on a concurrent write this many times.
MAX_CAS_ATTEMPTS = 64


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``patch`` applied to ``target`` (neither is mutated)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_increment(path: Sequence[str], by: int | float) -> None:
    if (
        not isinstance(path, (list, tuple))
        or not path
        or not all(isinstance(p, str) and p for p in path)
    ):
        raise BadRequest("path must be a non-empty list of field names", code="invalid_path")
    if isinstance(by, bool) or not isinstance(by, (int, float)):
        raise BadRequest("by must be a number", code="invalid_increment")


def increment(value: Any, path: Sequence[str], by: int | float) -> Any:
    """``value`` (an object, or None for a missing document) with ``by`` added to the
    number at ``path``, created as 0 with its parents; ``value`` is not mutated."""
    root = value if isinstance(value, dict) else {} if value is None else None
    if root is None:
        raise BadRequest("the document is not an object", code="invalid_path")
    root = dict(root)
    node = root
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise BadRequest(f"{part!r} is not an object", code="invalid_path")
        node[part] = child = dict(child)
        node = child
    current = node.get(path[-1], 0)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise BadRequest(f"{path[-1]!r} is not a number", code="invalid_path")
    total = current + by
    if not math.isfinite(total):
        raise BadRequest("the increment overflows", code="invalid_increment")
    node[path[-1]] = total
    return root


def _cursor(after: str | None) -> str | None:
    """A listing's ``after``: a name, as a page's ``next_after`` is; else 400."""
    if after is not None and not NAME_RE.fullmatch(after):
        raise BadRequest("after is not a cursor this listing returned", code="invalid_cursor")
    return after


def _prefix(prefix: str) -> str:
    if prefix and not _PREFIX_RE.fullmatch(prefix):
        raise BadRequest(
            "prefix must be at most 200 characters of A-Z a-z 0-9 . _ : -", code="invalid_prefix"
        )
    return prefix


_PREFIX_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def _not_found(namespace: str, key: str) -> NotFound:
    return NotFound(f"no state at {namespace}/{key}", code="state_not_found")


class StateStore(Store):
    """:class:`Store`'s shared state over the primitives below."""

    max_value_bytes: int

    def _state_name(self, namespace: str, key: str) -> str:
        return f"{validate_name('namespace', namespace)}/{validate_name('key', key)}"

    def _encode_value(self, value: Any) -> bytes:
        return dumps_limited(value, self.max_value_bytes, "document", "value_too_large")

    async def state_get(self, namespace: str, key: str) -> StateDoc:
        found = await self._state_peek(self._state_name(namespace, key))
        if found is None:
            raise _not_found(namespace, key)
        return StateDoc(orjson.loads(found[0]), found[1])

    async def state_put(
        self, namespace: str, key: str, value: Any, *, expected_version: int | None = None
    ) -> StateDoc:
        name = self._state_name(namespace, key)
        ok, version, current = await self._state_write(
            name, self._encode_value(value), expected_version
        )
        if not ok:
            raise StateConflict(
                None if current is None else StateDoc(orjson.loads(current), version)
            )
        if version == 1:
            await self._indexed(namespace, key)
        return StateDoc(value, version)

    async def state_delete(
        self, namespace: str, key: str, *, expected_version: int | None = None
    ) -> None:
        name = self._state_name(namespace, key)
        ok, version, current = await self._state_remove(name, expected_version)
        if ok:
            # Shielded, as a create's: a caller cancelled now must not leave the index behind.
            await asyncio.shield(self._state_unindex(namespace, [key]))
            return
        if current is None:
            raise _not_found(namespace, key)
        raise StateConflict(StateDoc(orjson.loads(current), version))

    async def state_patch(
        self, namespace: str, key: str, patch: Any, *, expected_version: int | None = None
    ) -> StateDoc:
        return await self._read_modify_write(
            namespace, key, lambda value: merge_patch(value, patch), expected_version
        )

    async def state_increment(
        self, namespace: str, key: str, path: Sequence[str], by: int | float
    ) -> StateDoc:
        check_increment(path, by)
        return await self._read_modify_write(
            namespace, key, lambda value: increment(value, path, by)
        )

    async def _read_modify_write(
        self,
        namespace: str,
        key: str,
        change: Callable[[Any], Any],
        expected: int | None = None,
    ) -> StateDoc:
        """Compare-and-set loop: each write applies to exactly the version it read.
        With ``expected``, one try: the change applies to that version or not at all
        (``StateConflict`` with the document now).

        Done here rather than in Lua on purpose: Redis's Lua JSON library turns empty
        arrays into objects and rounds numbers to 14 digits, which would corrupt documents.
        """
        name = self._state_name(namespace, key)
        for attempt in range(MAX_CAS_ATTEMPTS):
            found = await self._state_read(name)
            value, version = (None, 0) if found is None else (orjson.loads(found[0]), found[1])
            if expected is not None and version != expected:
                raise StateConflict(None if found is None else StateDoc(value, version))
            new = change(value)
            ok, new_version, current = await self._state_write(
                name, self._encode_value(new), version
            )
            if ok:
                if new_version == 1:
                    await self._indexed(namespace, key)
                return StateDoc(new, new_version)
            if expected is not None:  # written over since the read: that is a conflict too
                raise StateConflict(
                    None if current is None else StateDoc(orjson.loads(current), new_version)
                )
            # Contention: back off a little, with jitter, so writers do not lock-step.
            await asyncio.sleep(secrets.randbelow(1000) / 1e6 * (attempt + 1))
        raise Conflict(
            f"{namespace}/{key} changed {MAX_CAS_ATTEMPTS} times while being updated; retry",
            code="state_contended",
        )

    # -- listing ----------------------------------------------------------------------

    async def list_state_namespaces(self, *, limit: int, after: str | None = None) -> StateListing:
        rows = await self._state_namespaces(_cursor(after), limit + 1)
        page = [StateNamespace(name, count) for name, count in rows[:limit]]
        return StateListing(page, page[-1].name if len(rows) > limit else None)

    async def list_state_documents(
        self, namespace: str, *, limit: int, after: str | None = None, prefix: str = ""
    ) -> StateListing:
        validate_name("namespace", namespace)
        rows = await self._state_page(namespace, _cursor(after), _prefix(prefix), limit + 1)
        shown = rows[:limit]
        page = [StateEntry(k, *head) for k, head in shown if head]
        gone = [k for k, head in shown if head is None]
        if gone:
            await self._state_unindex(namespace, gone)
        # The cursor is the page's last key even when its document was gone: a page may
        # hold fewer than ``limit`` documents and still have more after it.
        return StateListing(page, shown[-1][0] if len(rows) > limit else None)

    async def _state_page(
        self, namespace: str, after: str | None, prefix: str, limit: int
    ) -> list[tuple[str, tuple[int, int] | None]]:
        """Up to ``limit`` indexed keys (as :meth:`_state_keys`) with their documents'
        heads (as :meth:`_state_heads`)."""
        keys = await self._state_keys(namespace, after, prefix, limit)
        heads = await self._state_heads([f"{namespace}/{k}" for k in keys])
        return list(zip(keys, heads, strict=True))

    async def _indexed(self, namespace: str, key: str) -> None:
        """Index a document just created. Shielded: a caller cancelled between the write
        and this (a turn interrupted) must not leave the document out of the listing."""
        await asyncio.shield(self._state_index(namespace, [key], add=True))

    async def _state_unindex(self, namespace: str, keys: list[str]) -> None:
        """Remove keys from the index, then put back any whose document exists again (a
        create that raced the removal: its own index write may have come before it)."""
        await self._state_index(namespace, keys, add=False)
        heads = await self._state_heads([f"{namespace}/{k}" for k in keys])
        back = [k for k, head in zip(keys, heads, strict=True) if head is not None]
        if back:
            await self._state_index(namespace, back, add=True)

    # -- primitives, each atomic in every implementation -----------------------------

    @abc.abstractmethod
    async def _state_read(self, name: str) -> tuple[bytes, int] | None:
        """(document JSON, version) or None."""

    async def _state_peek(self, name: str) -> tuple[bytes, int] | None:
        """As :meth:`_state_read`, for a plain read that may be served by a replica
        (``redis.replica_reads``), so up to ``redis.replica_max_lag`` behind; a
        read-modify-write reads the master."""
        return await self._state_read(name)

    @abc.abstractmethod
    async def _state_write(
        self, name: str, data: bytes, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        """Write if ``expected`` is None or equals the current version (0 = absent).

        Returns (written, version, current JSON): the new version when written, else the
        current version and document (None and 0 when absent)."""

    @abc.abstractmethod
    async def _state_index(self, namespace: str, keys: list[str], *, add: bool) -> None:
        """Add keys of ``namespace`` to the index (and the namespace to the namespaces),
        or remove them (and the namespace, when it has no key left)."""

    @abc.abstractmethod
    async def _state_namespaces(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` indexed namespaces after ``after``, by name, with their counts."""

    @abc.abstractmethod
    async def _state_keys(
        self, namespace: str, after: str | None, prefix: str, limit: int
    ) -> list[str]:
        """Up to ``limit`` indexed keys of ``namespace`` after ``after`` starting with
        ``prefix``, by name."""

    @abc.abstractmethod
    async def _state_heads(self, names: list[str]) -> list[tuple[int, int] | None]:
        """(version, size of the JSON) of each document ``namespace/key``, or None."""

    @abc.abstractmethod
    async def _state_remove(
        self, name: str, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        """Delete if present and (``expected`` is None or matches); same return shape."""
