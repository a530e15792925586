"""Timers that are reused wait their whole time every time.

libev keeps what was left of a one-shot timer when it is stopped or has fired, so a reused timer
restarted with start() waits only the rest: a connection's timeouts would shrink with each wait
until a healthy connection timed out at once, and the log would be written once per line. The
assertions are lower bounds on time, which a slow machine cannot break."""

from __future__ import annotations

import io
import time

import gevent
import pytest
from gevent import socket

from greenmesh.conn import Conn, ConnTimeout
from greenmesh.logfile import FLUSH_SECONDS, LineWriter


def test_a_connection_waits_its_whole_timeout_on_every_read():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    conn = Conn(server, timeout=0.3)
    try:
        for _ in range(3):  # the peer says nothing: each read times out, after 0.3 s each time
            start = time.monotonic()
            with pytest.raises(ConnTimeout):
                conn.read()
            assert time.monotonic() - start >= 0.25
        client.sendall(b"x")  # and a connection that timed out before still reads
        assert conn.read() == b"x"
    finally:
        conn.close("test")
        client.close()
        listener.close()


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[float] = []

    def flush(self) -> None:
        self.flushes.append(time.monotonic())


def test_log_lines_are_written_together_after_the_first_waited_its_time():
    stream = _CountingStream()
    writer = LineWriter(stream)
    for round_ in range(3):
        before = len(stream.flushes)
        start = time.monotonic()
        for i in range(5):
            writer.line(f"{round_} {i}")
        while len(stream.flushes) == before:
            gevent.sleep(0.005)
        assert stream.flushes[before] - start >= FLUSH_SECONDS * 0.8
    assert stream.getvalue().splitlines() == [f"{r} {i}" for r in range(3) for i in range(5)]
    assert len(stream.flushes) == 3
