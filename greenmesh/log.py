"""structlog set-up: JSON lines in production, key=value on a terminal.

Only the CLI calls ``configure``: an application embedding greenmesh keeps its own logging set-up,
and greenmesh's events flow through it (``logger.py``: the standard logging unless structlog is
configured).

Lines go to the stream through ``logfile.LineWriter`` (large buffers, flushed 50 ms after the
first line).
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import TextIO

import structlog

from greenmesh.access_log import AccessLog, JsonAccessLog
from greenmesh.logfile import LineWriter


class _StructlogLogger:
    """What structlog calls with each rendered line, whatever its level."""

    __slots__ = ("_line",)

    def __init__(self, writer: LineWriter):
        self._line = writer.line

    def msg(self, message: str) -> None:
        self._line(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


_METHODS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
            "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
            "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


def _leveled_logger(threshold: list[int]) -> type:
    """A bound-logger class whose methods below ``threshold[0]`` return at once, like
    structlog's filtering loggers, but with a threshold that admin's /logging can move (the
    loggers are cached on first use, so their class cannot be swapped afterwards)."""
    def method(name: str, number: int):
        def log(self, event: str | None = None, *args: object, **kw: object) -> None:
            if number < threshold[0]:
                return None
            if name == "exception":
                kw.setdefault("exc_info", True)
            return self._proxy_to_logger(name, event, **kw)
        return log
    return type("LeveledBoundLogger", (structlog.BoundLoggerBase,),
                {name: method(name, number) for name, number in _METHODS.items()})


def _tagged(worker: str):
    def add_worker(logger: object, method: str, event: dict) -> dict:
        event["worker"] = worker
        return event
    return add_worker


class Setup:
    """What ``configure`` set up: how the access log is written, and the lines' writer."""

    __slots__ = ("_access_log", "_writer", "_threshold")

    def __init__(self, access_log: AccessLog | None, writer: LineWriter, threshold: list[int]):
        self._access_log = access_log
        self._writer = writer
        self._threshold = threshold

    def line(self, text: str) -> None:
        """A line as it is (a listener's own access-log format) on the log stream."""
        self._writer.line(text)

    def set_level(self, level: str) -> None:
        """Lines below ``level`` are dropped from now on (admin's POST /logging)."""
        self._threshold[0] = logging.getLevelNamesMapping()[level.upper()]

    def access_log(self) -> AccessLog | None:
        return self._access_log

    def flush(self) -> None:
        """Writes the lines still waiting (they go out within 50 ms anyway, and at exit)."""
        self._writer.flush()


def configure(level: str = "info", fmt: str | None = None, stream: TextIO | None = None,
              worker: str | None = None) -> Setup:
    """structlog for the CLI's process; the returned Setup gives the access log to use (None
    when the level hides info lines). ``worker``: ``I/N``, on every line of a worker."""
    if stream is None:
        stream = sys.stdout
        if not stream.isatty():  # a bigger buffer than stdout's 8 KiB: fewer writes under load
            stream = open(stream.fileno(), "w", buffering=1 << 16, encoding="utf-8",
                          closefd=False)
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    writer = LineWriter(stream)
    atexit.register(writer.flush)
    logger = _StructlogLogger(writer)
    threshold = [logging.getLevelNamesMapping()[level.upper()]]
    structlog.configure(
        processors=[
            *([_tagged(worker)] if worker is not None else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=_leveled_logger(threshold),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=True,
    )
    if threshold[0] > logging.INFO:
        return Setup(None, writer, threshold)
    return Setup(JsonAccessLog(writer.line) if fmt == "json" else AccessLog(), writer, threshold)
