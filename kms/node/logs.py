"""The node's log lines: one event per line, as JSON or as text.

A record's structured fields come from ``extra={"fields": {...}}``. The node a
record is about adds its context fields (``node``, ``epoch`` and, while a DKG or
reshare runs, ``run``) through :func:`log_context`, a context variable that the
tasks a node starts inherit, so several nodes in one process each label their own
lines. A record's own fields win over the context's (``epoch`` of ``epoch
certified`` is the new epoch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

LOG_FORMATS = ("json", "text")

ContextFields = Callable[[], Mapping[str, Any]]

_CONTEXT: ContextVar[ContextFields | None] = ContextVar("quorum_kms_log_context", default=None)


@contextlib.contextmanager
def log_context(fields: ContextFields) -> Iterator[None]:
    """Within the block (and in the tasks started from it), records carry ``fields()``."""
    token = _CONTEXT.set(fields)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def set_log_context(fields: ContextFields) -> None:
    """From now on, in this task and the tasks it starts, records carry ``fields()`` (for a
    process that runs one node: ``kms node run``)."""
    _CONTEXT.set(fields)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The context's fields, then the record's own (which win)."""
    out: dict[str, Any] = {}
    context = _CONTEXT.get()
    if context is not None:
        out.update(context())
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        out.update(fields)
    return out


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``<UTC time> <level> <msg> key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{when}.{int(record.msecs):03d}Z", record.levelname.lower(), record.getMessage()]
        for key, value in record_fields(record).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if isinstance(value, str) and (not text or any(c in text for c in ' "=\n')):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for a ``log_format``: ``json``, else text."""
    return JSONFormatter() if fmt == "json" else TextFormatter()


class RateLimitedLog:
    """Log each distinct (peer, reason) at most once per ``interval`` seconds.

    The table of last times holds at most ``max_entries`` pairs (the oldest is forgotten
    first); ``suppressed`` counts the records not logged.
    """

    def __init__(self, interval: float = 60.0, max_entries: int = 1024) -> None:
        self.interval = interval
        self.max_entries = max_entries
        self.suppressed = 0
        self._last: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._last)

    def warn(self, peer: str, reason: str, **fields: Any) -> None:
        key = (peer[:64], reason[:80])
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.interval:
            self.suppressed += 1
            return
        self._last.pop(key, None)
        self._last[key] = now  # insertion order is age order
        while len(self._last) > self.max_entries:
            del self._last[next(iter(self._last))]
        logging.getLogger("quorum_kms.node").warning(
            "input rejected", extra={"fields": {"peer": peer, "reason": reason, **fields}}
        )
