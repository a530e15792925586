"""HTTP/2 conformance and stream isolation: h2spec against greenmesh in three set-ups, and a
peer's bad stream costing nobody else their requests."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from greenmesh.testing.nginx import h2c_proxy_server, start_nginx
from tests.h2client import H2Client
from tests.h2server import H2Upstream
from tests.harness import ROOT, free_port, mesh_config, wait_port

# H2SPEC=path overrides (the compiled build runs these tests from a copy of the tree).
H2SPEC = Path(os.environ.get("H2SPEC", ROOT.parent / "shared" / "tools" / "h2spec"))
PROTOCOL_ERROR, REFUSED_STREAM = 0x1, 0x7


def h2spec(port: int, *args: str) -> str:
    if not H2SPEC.exists():
        pytest.skip(f"h2spec is not at {H2SPEC} (the shared tools hold it; CI has them)")
    out = subprocess.run([str(H2SPEC), "-h", "127.0.0.1", "-p", str(port), "-o", "3", *args],
                         capture_output=True, text=True, timeout=300).stdout
    return re.sub(r"\x1b\[[0-9;]*m", "", out)


def assert_all_pass(out: str, total: int) -> None:
    summary = out.strip().splitlines()[-1]
    assert summary == f"{total} tests, {total} passed, 0 skipped, 0 failed", out[-3000:]


def http2_listener(endpoint: str, **kw) -> dict:
    return mesh_config([endpoint], listener={"protocol": "http2"}, **kw)


@pytest.mark.parametrize("strict", [False, True])
def test_h2spec_proxying_to_http1(upstream, start_mesh, strict):
    gm = start_mesh(http2_listener(upstream.address))
    assert_all_pass(h2spec(gm.port(), *(["-S"] if strict else [])), 147 if strict else 146)


def test_h2spec_with_a_direct_response(start_mesh):
    gm = start_mesh(http2_listener("127.0.0.1:1", routes=[
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "direct"}}]))
    assert_all_pass(h2spec(gm.port()), 146)
    assert_all_pass(h2spec(gm.port(), "-S"), 147)


def test_h2spec_proxying_to_h2c(upstream, start_mesh, tmp_path):
    port = free_port()
    nginx = start_nginx(tmp_path, "h2c", 1, h2c_proxy_server(port, upstream.port))
    try:
        wait_port(port, nginx)
        cfg = http2_listener(f"127.0.0.1:{port}", cluster={"protocol": "http2"})
        gm = start_mesh(cfg)
        assert_all_pass(h2spec(gm.port()), 146)
        assert_all_pass(h2spec(gm.port(), "-S"), 147)
    finally:
        nginx.terminate()
        nginx.wait()


GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t"), (b":path", b"/")]


@pytest.mark.parametrize("bad", [
    [*GET, (b"X-Upper", b"1")],  # an uppercase name
    [*GET, (b"connection", b"keep-alive")],  # a connection-specific field
    GET[1:],  # no :method
    [*GET, (b"x-split", b"a\r\nx-injected: 1")],  # CR/LF in a value
])
def test_a_malformed_stream_is_reset_and_its_sibling_completes(upstream, start_mesh, bad):
    gm = start_mesh(http2_listener(upstream.address))
    c = H2Client(gm.port(), checked=False)
    sibling = c.request("GET", "/delay/0.5")
    broken = c.send(bad)
    c.pump(lambda: c.done(sibling, broken))
    assert c.responses[broken].reset == PROTOCOL_ERROR
    assert c.responses[sibling].status == 200 and c.goaway is None
    assert gm.wait_log("bad_request")
    c.close()


def test_content_length_mismatch_resets_only_that_stream(upstream, start_mesh):
    gm = start_mesh(http2_listener(upstream.address))
    c = H2Client(gm.port(), checked=False)
    sibling = c.request("GET", "/delay/0.5")
    post = c.send([(b":method", b"POST"), *GET[1:], (b"content-length", b"10")], end=False)
    c.h2.send_data(post, b"only five", end_stream=True)  # 9 bytes, not 10
    c.sock.sendall(c.h2.data_to_send())
    c.pump(lambda: c.done(sibling, post))
    assert c.responses[post].reset == PROTOCOL_ERROR
    assert c.responses[sibling].status == 200
    c.close()


@pytest.mark.parametrize("rest, resets", [(b"12345678", []), (b"1234", [PROTOCOL_ERROR])])
def test_a_body_that_goes_on_after_a_local_reply_is_read_and_checked(start_mesh, rest, resets):
    """The reply ends the stream first; the body sent after it still gets its END_STREAM seen
    (no reset) or, if it breaks content-length, PROTOCOL_ERROR, whatever the timing."""
    gm = start_mesh(http2_listener("127.0.0.1:1", routes=[
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "direct"}}]))
    c = H2Client(gm.port(), checked=False)
    post = c.send([(b":method", b"POST"), *GET[1:], (b"content-length", b"8")], end=False)
    c.pump(lambda: c.responses[post].ended)
    assert bytes(c.responses[post].body) == b"direct"
    c.h2.send_data(post, rest, end_stream=True)
    c.sock.sendall(c.h2.data_to_send())
    c.ping()
    assert [code for sid, code in c.wire_resets if sid == post] == resets
    after = c.request("GET", "/")
    c.pump(lambda: c.done(after))
    assert c.responses[after].status == 200 and c.goaway is None
    c.close()


def test_the_101st_concurrent_stream_is_refused_and_100_complete(upstream, start_mesh):
    gm = start_mesh(http2_listener(upstream.address))
    c = H2Client(gm.port())
    sids = [c.request("GET", "/delay/1") for _ in range(101)]
    c.pump(lambda: c.done(*sids), timeout=30)
    refused = [s for s in sids if c.responses[s].reset == REFUSED_STREAM]
    assert refused == [sids[-1]]
    assert all(c.responses[s].status == 200 for s in sids[:100])
    c.close()


def test_a_refused_upstream_stream_is_retried_by_a_refused_stream_policy(start_mesh):
    up = H2Upstream(refuse=1)
    cfg = mesh_config([up.address], cluster={"protocol": "http2"}, routes=[{
        "match": {"prefix": "/"}, "route": {"cluster": "backend", "retry_policy": {
            "retry_on": "refused-stream", "num_retries": 1}}}])
    gm = start_mesh(cfg)
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=10)
    conn.request("GET", "/twice")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"/twice"
    assert gm.stat("cluster.backend.upstream_rq_retry") == 1
    assert up.seen == [b"/twice", b"/twice"]  # refused once, then served
    up.stop()
