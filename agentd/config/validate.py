"""A raw TOML table read into a section's dataclass, field by field, by what each field
declares (:func:`~.fields.opt`): every type, range or choice error is collected with its
key path rather than raised at the first."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _describe(value: Any) -> str:
    kind = _TYPE_NAMES.get(type(value))
    if kind is None:
        kind = (
            "array"
            if isinstance(value, list)
            else "table"
            if isinstance(value, dict)
            else type(value).__name__
        )
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{kind} {shown}"


def _scalar(path: str, tp: type, value: Any, errors: list[str]) -> Any:
    if tp is float and type(value) is int:
        value = float(value)
    if type(value) is not tp:
        errors.append(f"{path}: expected {_TYPE_NAMES[tp]}, got {_describe(value)}")
        return None
    return value


def _field_value(
    path: str, f: dataclasses.Field[Any], tp: Any, value: Any, errors: list[str]
) -> Any:
    meta = f.metadata
    if meta.get("auto") is not None:
        if value == "auto":
            return meta["auto"]()
        if type(value) is not tp and not (tp is float and type(value) is int):
            kind = _TYPE_NAMES[tp]
            article = "an" if kind[0] in "aeiou" else "a"
            errors.append(f'{path}: expected {article} {kind} or "auto", got {_describe(value)}')
            return None
    origin = typing.get_origin(tp)
    if origin is dict:
        # A free-form table of scalars (model parameters): passed through as given.
        if not isinstance(value, dict):
            errors.append(f"{path}: expected table, got {_describe(value)}")
            return None
        for k, v in value.items():
            if not isinstance(v, (str, int, float, bool)) and not (
                isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v)
            ):
                errors.append(f"{path}.{k}: expected a string, number, boolean or array of them")
        return dict(value)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            errors.append(f"{path}: expected array, got {_describe(value)}")
            return None
        if dataclasses.is_dataclass(item_tp):
            items = [read_section(f"{path}[{i}]", item_tp, v, errors) for i, v in enumerate(value)]
        else:
            items = [_scalar(f"{path}[{i}]", item_tp, v, errors) for i, v in enumerate(value)]
            check = meta.get("check")
            if check is not None:
                for i, item in enumerate(items):
                    msg = check(item) if item is not None else None
                    if msg:
                        errors.append(f"{path}[{i}]: {msg}")
        return tuple(items)
    if dataclasses.is_dataclass(tp):
        return read_section(path, tp, value, errors)
    before = len(errors)
    value = _scalar(path, tp, value, errors)
    if len(errors) > before:
        return None
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        errors.append(f"{path}: must be >= {lo}, got {value}")
    elif hi is not None and value > hi:
        errors.append(f"{path}: must be <= {hi}, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        errors.append(f"{path}: must be one of {', '.join(choices)}; got {value!r}")
    check = meta.get("check")
    if check is not None and (msg := check(value)):
        errors.append(f"{path}: {msg}")
    return value


def read_section(path: str, cls: type, raw: Any, errors: list[str]) -> Any:
    """The section ``cls`` read from ``raw`` at ``path``; each problem is added to
    ``errors`` and the field keeps its default."""
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected table, got {_describe(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in raw:
        if key not in fields:
            known = ", ".join(fields)
            errors.append(f"{_join(path, key)}: unknown key (known: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        tp = hints[name]
        if isinstance(tp, types.UnionType):
            tp = typing.get_args(tp)[0]
        if name not in raw:
            # Defaults need resolving too: "auto" values and nested sections.
            if f.metadata.get("auto") is not None and f.default == "auto":
                values[name] = f.metadata["auto"]()
            elif dataclasses.is_dataclass(tp):
                values[name] = read_section(_join(path, name), tp, {}, errors)
            continue
        value = _field_value(_join(path, name), f, tp, raw[name], errors)
        if value is not None:
            values[name] = value
    return cls(**values)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
