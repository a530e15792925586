"""greenmesh's loggers: structlog's once structlog is configured (by the CLI, or by the host
application for its own use), else the standard library's ``logging``.

An embedded mesh must not print through an unconfigured structlog (its default prints every
level, debug included, to stdout): there its lines go to ``logging.getLogger(name)`` as
``event key=value ...`` messages, so the host's levels and handlers decide (by default: warnings
and errors only, on stderr). Which way is decided at each call, because modules make their
loggers at import, before the CLI configures anything.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


def _text(value: object) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and "=" not in value else repr(value)
    return str(value)


class Logger:
    """structlog's calling convention (``log.info("event", key=value)``), either way."""

    __slots__ = ("name", "_std", "_structlog")

    def __init__(self, name: str):
        self.name = name
        self._std = logging.getLogger(name)
        self._structlog: Any = None

    def _emit(self, method: str, level: int, event: str, kw: dict[str, Any]) -> None:
        if structlog.is_configured():
            bound = self._structlog
            if bound is None:
                bound = self._structlog = structlog.get_logger(self.name)
            getattr(bound, method)(event, **kw)
            return
        std = self._std
        if not std.isEnabledFor(level):
            return
        exc_info = kw.pop("exc_info", method == "exception")
        fields = " ".join(f"{k}={_text(v)}" for k, v in kw.items())
        std.log(level, f"{event} {fields}" if fields else event, exc_info=exc_info)

    def wants(self, level: int) -> bool:
        """Whether a line at ``level`` would go anywhere (structlog's set-up filters its own),
        so that a caller can skip building one per request."""
        return structlog.is_configured() or self._std.isEnabledFor(level)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", logging.DEBUG, event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", logging.INFO, event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", logging.WARNING, event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", logging.ERROR, event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._emit("exception", logging.ERROR, event, kw)


def get_logger(name: str) -> Logger:
    return Logger(name)
