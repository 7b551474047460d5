"""Logging set-up: text or JSON lines on stderr, every line tagged with the worker id."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ("MalformedRequests", "setup_logging")

# At most one line about malformed requests per this many seconds, per process.
MALFORMED_EVERY_S = 10.0

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


class MalformedRequests(logging.Filter):
    """Turns aiohttp's log of a request it could not parse (an error with a traceback
    per bad request line, on ``aiohttp.server``) into one info line, at most one per
    ``every_s`` seconds, saying how many more were left out. aiohttp still answers each
    such request 400; every other record passes as it is."""

    MESSAGE = "Error handling request from %s"

    def __init__(
        self, every_s: float = MALFORMED_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._every_s = every_s
        self._clock = clock
        self._next = -math.inf
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg != self.MESSAGE or not isinstance(exc, HttpProcessingError):
            return True
        level = min(record.levelno, logging.INFO)
        if not logging.getLogger(record.name).isEnabledFor(level):
            return False
        now = self._clock()
        if now < self._next:
            self._left_out += 1
            return False
        self._next = now + self._every_s
        why = " ".join(str(exc.message).split())[:200]
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "malformed request from %s answered %d: %s"
        record.args = (remote, exc.code, why)
        if self._left_out:
            record.msg += " (%d more since the last such line)"
            record.args = (remote, exc.code, why, self._left_out)
        self._left_out = 0
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.exc_info, record.exc_text = None, None
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
    server = logging.getLogger("aiohttp.server")
    for old_filter in server.filters[:]:
        if isinstance(old_filter, MalformedRequests):
            server.removeFilter(old_filter)
    server.addFilter(MalformedRequests())
