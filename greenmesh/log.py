"""structlog set-up: JSON lines in production, key=value on a terminal.

Only the CLI calls ``configure``: an application embedding greenmesh keeps its own logging set-up,
and greenmesh's events flow through it.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str | None = None, stream=None) -> None:
    stream = stream or sys.stdout
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
