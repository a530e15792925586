"""The CLI's JSON access log formats its lines itself (it runs once per request): they must
say what the structlog pipeline, which an embedding application's lines go through, says."""

from __future__ import annotations

import io
import json
import re

import structlog

from greenmesh.access_log import AccessLog, JsonAccessLog
from greenmesh.log import configure
from greenmesh.streams.base import RequestHead

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_json_access_log_lines_are_the_structlog_pipelines_lines():
    stream = io.StringIO()
    try:
        setup = configure("info", "json", stream=stream)
        fast = setup.access_log()
        assert isinstance(fast, JsonAccessLog)
        cases = [
            ("ingress", "http1", RequestHead(b"GET", b'/a?b="c"\\', b"example.com", b"http",
                                             [(b"user-agent", b'curl/8 "x"')]),
             200, "-", 0, 17, 532, "up", "127.0.0.1:80", ""),
            ("in", "http2", RequestHead(b"POST", b"/\x01\n", b"h\xe9", b"https",
                                        [(b"x-request-id", b"r\xe9-1")]),
             503, "UF,URX", 12, 0, 1234567, None, None, 'connect to 10.0.0.1:80: "refused"'),
            ("in", "bolt", RequestHead(b"GET", b"/", b"h", b"", []), 200, "-", 0, 0, 1000, "c",
             "[::1]:80", ""),
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


UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_default_line_says_protocol_user_agent_and_a_generated_request_id(upstream,
                                                                             start_mesh):
    from tests.harness import mesh_config
    gm = start_mesh(mesh_config([upstream.address]))
    status, body = _get(gm.port(), "/echo", {"user-agent": "probe/1"})
    forwarded = json.loads(body)["headers"]["x-request-id"]
    assert status == 200 and UUID4.fullmatch(forwarded)  # generated, and sent upstream
    _get(gm.port(), "/", {"x-request-id": "given-1"})
    first, second = gm.access(2)
    assert (first["protocol"], first["user_agent"], first["request_id"]) == (
        "http1", "probe/1", forwarded)
    assert second["request_id"] == "given-1"  # kept as the client sent it


def test_a_listeners_own_format_and_file_reopened_on_sigusr1(upstream, start_mesh, tmp_path):
    import signal

    from tests.harness import mesh_config, until
    path = tmp_path / "access.log"
    fmt = ('%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% '
           '"%REQ(USER-AGENT)%" %REQ(X-MISSING?:AUTHORITY)% %UPSTREAM_CLUSTER% %REQ(X-NONE)%')
    gm = start_mesh(mesh_config([upstream.address], listener={
        "access_log": {"path": str(path), "format": fmt}}))
    _get(gm.port(), "/a", {"user-agent": "probe/1", "host": "svc"})
    assert until(lambda: path.exists() and path.read_text().endswith("\n"))
    assert path.read_text() == 'GET /a HTTP/1.1 200 - "probe/1" svc backend -\n'
    path.rename(tmp_path / "access.log.1")  # logrotate moves it away...
    gm.proc.send_signal(signal.SIGUSR1)  # ...and asks for a new one
    gm.wait_log("access_logs_reopened")
    _get(gm.port(), "/b", {"host": "svc"})
    assert until(lambda: path.exists() and path.read_text().endswith("\n"))
    assert path.read_text().startswith("GET /b HTTP/1.1 200 ")
    assert (tmp_path / "access.log.1").read_text().count("\n") == 1


def test_json_format_keeps_numbers_and_nulls(upstream, start_mesh, tmp_path):
    from tests.harness import mesh_config, until
    path = tmp_path / "access.json"
    gm = start_mesh(mesh_config([upstream.address], listener={"access_log": {
        "path": str(path), "json_format": {"code": "%RESPONSE_CODE%", "who": "%REQ(USER-AGENT)%",
                                           "line": "%REQ(:METHOD)% %REQ(:PATH)%",
                                           "gone": "%REQ(X-NONE)%"}}}))
    _get(gm.port(), "/c", {"user-agent": "p"})
    assert until(lambda: path.exists() and path.read_text().endswith("\n"))
    assert json.loads(path.read_text()) == {"code": 200, "who": "p", "line": "GET /c",
                                            "gone": None}


def test_envoys_access_log_config_and_bad_formats_name_their_key():
    import pytest

    from greenmesh.config import ConfigError, load_dict
    from tests.harness import mesh_config
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network."
                    "http_connection_manager.v3.HttpConnectionManager",
           "rds": {"route_config_name": "r", "config_source": {"ads": {}}},
           "generate_request_id": False,
           "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                        "FileAccessLog", "path": "/tmp/a.log",
               "log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}}}]}
    [lst] = load_dict({"xds": {"server": "127.0.0.1:1", "node": {"id": "n"}}, "listeners": [{
        "name": "l", "address": "127.0.0.1:1", "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm}]}]}]}).listeners
    assert lst.access_log_format is not None
    assert (lst.access_log_format.path, lst.access_log_format.text_format,
            lst.generate_request_id) == ("/tmp/a.log", "%RESPONSE_CODE%\n", False)
    with pytest.raises(ConfigError) as e:
        load_dict(mesh_config(["127.0.0.1:1"], listener={"access_log": {
            "format": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"}}))
    assert e.value.errors[0].startswith(
        "listeners[0].access_log.format: %RESP% is not a command operator greenmesh knows")
