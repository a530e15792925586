"""The CLI's JSON access log formats its lines itself (it runs once per request): they must
say what the structlog pipeline, which an embedding application's lines go through, says."""

from __future__ import annotations

import io
import json
import re

import structlog

from greenmesh.access_log import AccessLog, JsonAccessLog
from greenmesh.log import configure

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_json_access_log_lines_are_the_structlog_pipelines_lines():
    stream = io.StringIO()
    try:
        setup = configure("info", "json", stream=stream)
        fast = setup.access_log()
        assert isinstance(fast, JsonAccessLog)
        cases = [
            ("ingress", b"GET", b"example.com", b'/a?b="c"\\', 200, "-", 0, 17, 532, "up",
             "127.0.0.1:80", ""),
            ("in", b"POST", b"h\xe9", b"/\x01\n", 503, "UF,URX", 12, 0, 1234567, None, None,
             'connect to 10.0.0.1:80: "refused"'),
            ("in", b"GET", b"h", b"/", 200, "-", 0, 0, 1000, "c", "[::1]:80", ""),
        ]
        for args in cases:
            AccessLog().log(*args)
            fast.log(*args)
        setup.flush()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()
    assert len(lines) == 2 * len(cases)
    for slow, quick in zip(lines[::2], lines[1::2], strict=True):
        assert TIMESTAMP.fullmatch(slow.pop("timestamp"))
        assert TIMESTAMP.fullmatch(quick.pop("timestamp"))
        assert quick == slow
    assert [line["duration_ms"] for line in lines[1::2]] == [0.532, 1234.567, 1.0]
