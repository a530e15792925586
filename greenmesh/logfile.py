"""The process's log stream, written in large buffers.

Lines are written FLUSH_SECONDS after the first of them, not once per line nor once per loop
turn: under load one write carries hundreds of access-log lines (strace showed a write per
request with the per-turn flush), and a line appears within 50 ms. Compiled in the compiled
build: the access log writes a line per request through it.
"""

from __future__ import annotations

from typing import Final, TextIO

import gevent

FLUSH_SECONDS: Final = 0.05
FLUSH_CHARS: Final = 1 << 16  # or sooner, once this much is waiting


class LineWriter:
    """Collects lines and writes them to the stream in one write, FLUSH_SECONDS after the first
    line since the last flush (or once FLUSH_CHARS are waiting). It keeps its own buffer rather
    than rely on the stream's, which may be a terminal's line buffer or off altogether."""

    __slots__ = ("_stream", "_lines", "_chars", "_timer")

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lines: list[str] = []
        self._chars = 0
        # Repeating, armed with again(): a stopped one-shot libev timer keeps only what was
        # left of its time, so start() would fire at once from the second flush on.
        self._timer = gevent.get_hub().loop.timer(FLUSH_SECONDS, FLUSH_SECONDS)

    def line(self, message: str) -> None:
        lines = self._lines
        if not lines:
            self._timer.again(self.flush)
        lines.append(message)
        self._chars += len(message)
        if self._chars > FLUSH_CHARS:
            self.flush()

    def flush(self) -> None:
        self._timer.stop()
        lines = self._lines
        if not lines:
            return
        text = "\n".join(lines)
        lines.clear()
        self._chars = 0
        try:
            self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe must not take the proxy down
            pass


class FileLineWriter(LineWriter):
    """A LineWriter on a file it opened (an access log's ``path``), which ``reopen`` opens
    again at the same path: after logrotate moved it away, on SIGUSR1."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path
        super().__init__(open(path, "a", encoding="utf-8"))

    def reopen(self) -> None:
        self.flush()
        old = self._stream
        self._stream = open(self.path, "a", encoding="utf-8")
        old.close()

    def close(self) -> None:
        self.flush()
        self._stream.close()
