"""The process's log stream, written in large buffers.

Lines are flushed FLUSH_SECONDS after the first of them, not once per line nor once per loop
turn: under load one write carries hundreds of access-log lines (strace showed a write per
request with the per-turn flush), and a line appears within 50 ms. Compiled in the compiled
build: the access log writes a line per request through it.
"""

from __future__ import annotations

from typing import Final, TextIO

import gevent

FLUSH_SECONDS: Final = 0.05


class LineWriter:
    """Writes lines to a buffered stream, flushed FLUSH_SECONDS after the first line written
    since the last flush."""

    __slots__ = ("_write", "_stream", "_pending", "_timer")

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._write = stream.write
        self._pending = False
        self._timer = gevent.get_hub().loop.timer(FLUSH_SECONDS)

    def line(self, message: str) -> None:
        self._write(message)
        self._write("\n")
        if not self._pending:
            self._pending = True
            self._timer.start(self.flush)

    def flush(self) -> None:
        self._pending = False
        try:
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe must not take the proxy down
            pass
