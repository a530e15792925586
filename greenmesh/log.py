"""structlog set-up: JSON lines in production, key=value on a terminal.

Only the CLI calls ``configure``: an application embedding greenmesh keeps its own logging set-up,
and greenmesh's events flow through it.

Lines are written into a large buffer and flushed FLUSH_SECONDS after the first of them, not
once per line nor once per loop turn: under load one write carries hundreds of access-log lines
(strace showed a write per request with the per-turn flush), and a line appears within 50 ms.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import TextIO

import gevent
import structlog

from greenmesh.access_log import AccessLog, JsonAccessLog

FLUSH_SECONDS = 0.05


class _LoopFlushedLogger:
    """A structlog logger writing to a buffered stream, flushed FLUSH_SECONDS after the first
    line written since the last flush."""

    __slots__ = ("_write", "_stream", "_pending", "_timer")

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._write = stream.write
        self._pending = False
        self._timer = gevent.get_hub().loop.timer(FLUSH_SECONDS)

    def msg(self, message: str) -> None:
        self._write(message)
        self._write("\n")
        if not self._pending:
            self._pending = True
            self._timer.start(self._flush)

    def _flush(self) -> None:
        self._pending = False
        try:
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe must not take the proxy down
            pass

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class Setup:
    """What ``configure`` set up: how the access log is written."""

    __slots__ = ("_access_log",)

    def __init__(self, access_log: AccessLog | None):
        self._access_log = access_log

    def access_log(self) -> AccessLog | None:
        return self._access_log


def configure(level: str = "info", fmt: str | None = None, stream: TextIO | None = None
              ) -> Setup:
    """structlog for the CLI's process; the returned Setup gives the access log to use (None
    when the level hides info lines)."""
    if stream is None:
        stream = sys.stdout
        if not stream.isatty():  # a bigger buffer than stdout's 8 KiB: fewer writes under load
            stream = open(stream.fileno(), "w", buffering=1 << 16, encoding="utf-8",
                          closefd=False)
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    logger = _LoopFlushedLogger(stream)
    atexit.register(logger._flush)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=True,
    )
    number = logging.getLevelNamesMapping()[level.upper()]
    if number > logging.INFO:
        return Setup(None)
    return Setup(JsonAccessLog(logger.msg) if fmt == "json" else AccessLog())
