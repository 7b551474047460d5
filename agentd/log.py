"""Logging set-up: text or JSON lines on stderr, every line tagged with the worker id."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ("setup_logging",)

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is
# written out as a field of its own.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "worker"}


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname:<7} [{record.worker}:{record.process}] "  # type: ignore[attr-defined]
            f"{record.name}: {record.getMessage()}"
        )
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "worker": record.worker,  # type: ignore[attr-defined]
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class _WorkerTag(logging.Filter):
    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def setup_logging(level: str, fmt: str, worker: str) -> None:
    """(Re)configure the root logger; ``worker`` is ``main`` or the worker's slot id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_WorkerTag(worker))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is only on when asked for (log.access); keep its noise level.
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
