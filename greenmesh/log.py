"""structlog set-up: JSON lines in production, key=value on a terminal.

Only the CLI calls ``configure``: an application embedding greenmesh keeps its own logging set-up,
and greenmesh's events flow through it.

Lines are written into the stream's buffer and flushed once per turn of the gevent loop, not
once per line: under load one write carries many access-log lines (a syscall per request was
a tenth of the proxy's CPU), and when idle a line still appears at once.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import TextIO

import gevent
import structlog


class _LoopFlushedLogger:
    """A structlog logger writing to a buffered stream, flushed at the end of a loop turn."""

    __slots__ = ("_write", "_stream", "_pending", "_loop")

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._write = stream.write
        self._pending = False
        self._loop = gevent.get_hub().loop

    def msg(self, message: str) -> None:
        self._write(message + "\n")
        if not self._pending:
            self._pending = True
            self._loop.run_callback(self._flush)

    def _flush(self) -> None:
        self._pending = False
        try:
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe must not take the proxy down
            pass

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure(level: str = "info", fmt: str | None = None, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
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
