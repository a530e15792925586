"""HTTP/1.1 end to end: curl and raw sockets -> the greenmesh process -> real upstreams."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.harness import (
    RawUpstream,
    free_port,
    mesh_config,
    raw_request,
    reset,
    rss_kb,
)


def run_curl(curl: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([curl, "-s", "--max-time", str(timeout), *args], capture_output=True,
                          timeout=timeout + 5)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_curl_through_greenmesh(upstream, start_mesh, curl):
    gm = start_mesh(mesh_config([upstream.address]))
    r = run_curl(curl, "-i", gm.url + "/")
    assert r.returncode == 0
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"x-upstream: up1" in head
    assert body == b"hello from up1\n"
    (entry,) = gm.access()
    assert entry["status"] == 200 and entry["method"] == "GET" and entry["path"] == "/"
    assert entry["upstream"] == upstream.address and entry["flags"] == "-"
    assert entry["bytes_out"] == len(body) and entry["duration_ms"] > 0


def test_keepalive_reuse_is_visible_upstream(upstream, start_mesh, curl):
    gm = start_mesh(mesh_config([upstream.address]))
    seen = set()  # the upstream's count of connections it accepted, as each request saw it
    for _ in range(5):  # separate downstream connections, one pooled upstream connection
        r = run_curl(curl, "-i", gm.url + "/")
        seen.add(r.stdout.split(b"x-upstream-connections: ")[1].split(b"\r\n")[0])
    # And one downstream connection carrying several requests.
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        seen.add(resp.getheader("x-upstream-connections").encode())
        resp.read()
    conn.close()
    assert len(seen) == 1, seen


def test_headers_hop_by_hop_and_forwarded(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    conn.request("GET", "/echo?x=1", headers={
        "Connection": "keep-alive, X-Secret", "X-Secret": "hop", "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive", "TE": "gzip", "X-Forwarded-For": "10.1.2.3",
        "X-Forwarded-Proto": "https", "X-Kept": "yes"})
    meta = json.loads(conn.getresponse().read().split(b"\n", 1)[0])
    h = meta["headers"]
    assert meta["query"] == "x=1"
    for gone in ("x-secret", "keep-alive", "proxy-connection", "te"):
        assert gone not in h, gone
    assert h["x-kept"] == "yes"
    assert h["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"


def test_head_and_no_body_statuses(upstream, start_mesh, curl):
    gm = start_mesh(mesh_config([upstream.address]))
    r = run_curl(curl, "-I", gm.url + "/")
    assert r.stdout.startswith(b"HTTP/1.1 200") and b"content-length: 15" in r.stdout.lower()
    for code in (204, 304):
        r = run_curl(curl, "-i", f"{gm.url}/status/{code}")
        assert r.stdout.startswith(f"HTTP/1.1 {code}".encode()), r.stdout
    # Keep-alive still works after a HEAD (no body was expected or sent).
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    conn.request("HEAD", "/")
    assert conn.getresponse().read() == b""
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"hello from up1\n"


def test_chunked_bodies_both_ways(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    body = b"".join(b"%05d" % i for i in range(20000))
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=10)
    # A chunked upload (no content-length), streamed from an iterator.
    conn.request("POST", "/echo", body=(body[i:i + 7777] for i in range(0, len(body), 7777)))
    resp = conn.getresponse()
    meta, _, echoed = resp.read().partition(b"\n")
    assert json.loads(meta)["body_length"] == len(body)
    assert echoed == body
    # The upstream's streamed response (no content-length) reaches the client chunked.
    conn.request("GET", "/bytes/1000000")
    resp = conn.getresponse()
    assert resp.getheader("transfer-encoding") == "chunked"
    assert len(resp.read()) == 1000000


def test_large_bodies_stream_with_bounded_memory(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], timeout="120s"))
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=60)
    conn.request("GET", "/bytes/1000000")  # warm up pools and code paths
    conn.getresponse().read()
    base = rss_kb(gm.proc.pid)
    size = 1 << 30  # 1 GiB up
    block = b"u" * (1 << 20)

    def upload():
        for _ in range(size // len(block)):
            yield block
    conn.request("POST", "/sink", body=upload(), headers={"Content-Length": str(size)})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == f"{size}\n".encode()
    # 256 MiB down, read slowly at first so greenmesh must not buffer ahead of the client.
    conn.request("GET", f"/bytes/{256 << 20}")
    resp = conn.getresponse()
    time.sleep(0.5)
    got = 0
    while chunk := resp.read(1 << 20):
        got += len(chunk)
    assert got == 256 << 20
    peak = rss_kb(gm.proc.pid, "VmHWM")
    assert peak - base < 8 * 1024, f"RSS grew by {peak - base} KiB"


def test_pipelined_requests_answered_in_order(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    reqs = b"".join(b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    reqs += b"GET /echo?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw_request(gm.port(), reqs)
    queries = [json.loads(line)["query"] for line in out.split(b"\n") if line.startswith(b"{")]
    assert queries == [f"n={i}" for i in range(5)] + ["n=last"]
    assert out.count(b"HTTP/1.1 200") == 6


def test_expect_100_continue(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    with socket.create_connection(("127.0.0.1", gm.port()), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        interim = s.recv(65536)  # the body is held back until greenmesh asks for it
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        s.sendall(b"hello")
        out = b""
        while b"hello" not in out:
            out += s.recv(65536)
    assert out.startswith(b"HTTP/1.1 200")
    meta = json.loads(out.split(b"\r\n\r\n", 1)[1].split(b"\n", 1)[0])
    assert "expect" not in meta["headers"] and meta["body_length"] == 5


def test_expect_100_continue_not_sent_when_no_route(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], routes=[
        {"match": {"prefix": "/api"}, "route": {"cluster": "backend"}}]))
    out = raw_request(gm.port(), b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                 b"Expect: 100-continue\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404"), out


def test_informational_responses_are_forwarded(start_mesh):
    def script(conn, index, head):
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    up = RawUpstream(script)
    gm = start_mesh(mesh_config([up.address]))
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 103 ") and b"link: </style.css>" in out.lower()
    assert b"HTTP/1.1 200 OK" in out and out.endswith(b"ok")


def test_websocket_upgrade_is_tunnelled(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    with socket.create_connection(("127.0.0.1", gm.port()), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        for word in (b"hello", b"tunnel", b"x" * 100000):
            s.sendall(word)
            got = b""
            while len(got) < len(word):
                got += s.recv(65536)
            assert got == word.upper()
    assert gm.access()[0]["status"] == 101


def test_200_concurrent_clients(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))

    def one(i: int) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=30)
        conn.request("POST", f"/echo?i={i}", body=f"body-{i}".encode())
        meta, _, body = conn.getresponse().read().partition(b"\n")
        conn.close()
        assert body == f"body-{i}".encode()
        return json.loads(meta)["query"]

    barrier = threading.Barrier(200)

    def start_together(i: int) -> str:
        barrier.wait()
        return one(i)
    with ThreadPoolExecutor(200) as ex:
        results = list(ex.map(start_together, range(200)))
    assert results == [f"i={i}" for i in range(200)]


def test_no_route_is_404(upstream, start_mesh, curl):
    gm = start_mesh(mesh_config([upstream.address], domains=("api.example.com", "*.svc.local")))
    assert run_curl(curl, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: other.example",
                    gm.url + "/").stdout == b"404"
    for host in ("api.example.com", "API.example.com:80", "a.b.svc.local"):
        assert run_curl(curl, "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}",
                        gm.url + "/").stdout == b"200", host
    assert gm.access()[0]["flags"] == "NR"


def test_upstream_refused_is_503(start_mesh, curl):
    gm = start_mesh(mesh_config([f"127.0.0.1:{free_port()}"]))
    r = run_curl(curl, "-i", gm.url + "/")
    assert r.stdout.startswith(b"HTTP/1.1 503")
    assert b"reset reason: connection failure" in r.stdout
    assert gm.access()[0]["flags"] == "UF"


def test_upstream_reset_before_response_is_502(upstream, start_mesh, curl):
    gm = start_mesh(mesh_config([upstream.address]))
    r = run_curl(curl, "-i", gm.url + "/close")
    assert r.stdout.startswith(b"HTTP/1.1 502"), r.stdout
    assert gm.access()[0]["flags"] == "UC"
    assert run_curl(curl, gm.url + "/").stdout == b"hello from up1\n"  # and life goes on


def test_upstream_garbage_is_502(start_mesh, curl):
    up = RawUpstream(lambda conn, i, head: conn.sendall(b"NOT HTTP AT ALL\r\n\r\n") or False)
    gm = start_mesh(mesh_config([up.address]))
    r = run_curl(curl, "-i", gm.url + "/")
    assert r.stdout.startswith(b"HTTP/1.1 502") and b"reset reason: protocol error" in r.stdout
    assert gm.access()[0]["flags"] == "UPE"


def test_upstream_timeout_is_504(upstream, start_mesh, curl):
    gm = start_mesh(mesh_config([upstream.address], timeout="300ms"))
    t0 = time.monotonic()
    r = run_curl(curl, "-i", gm.url + "/delay/3")
    assert r.stdout.startswith(b"HTTP/1.1 504")
    assert b"upstream request timeout" in r.stdout
    assert time.monotonic() - t0 < 2
    assert gm.access()[0]["flags"] == "UT"


def test_timeout_mid_body_cuts_the_response(start_mesh):
    def script(conn, index, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        time.sleep(3)
    up = RawUpstream(script)
    gm = start_mesh(mesh_config([up.address], timeout="300ms"))
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"half")  # cut, never completed


def test_stale_keepalive_connection_is_retried(start_mesh):
    def script(conn, index, head):
        if index == 0:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            return None
        reset(conn)  # the second request on a reused connection dies before any byte
        return False
    up = RawUpstream(script)
    gm = start_mesh(mesh_config([up.address]))
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    conn.request("GET", "/a")
    assert conn.getresponse().read() == b"first"
    conn.request("GET", "/b")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"first"  # answered on a new connection
    assert up.connections == 2
    # A POST is not idempotent: the same failure is a 502, not a silent second send.
    conn.request("POST", "/c", body=b"x")
    assert conn.getresponse().status == 502


def test_malformed_requests_get_400_and_close(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    for bad in (b"GARBAGE\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: sp\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\nX\x00: 1\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        out = raw_request(gm.port(), bad)
        assert out.startswith(b"HTTP/1.1 400"), (bad, out)
        assert b"connection: close" in out.lower()
    # Garbage pipelined behind a good request: the good one is answered, then a 400.
    out = raw_request(gm.port(), b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x16\x03\x01garbage")
    assert out.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" in out


def test_headers_too_large_is_431(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={"max_request_headers_kb": 8}))
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431"), out[:100]
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\nX-Ok: " + b"a" * 4000
                      + b"\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")


def test_one_bad_client_does_not_disturb_others(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    slow = socket.create_connection(("127.0.0.1", gm.port()))
    slow.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
    half = socket.create_connection(("127.0.0.1", gm.port()))
    half.sendall(b"GET / HTTP/1.1\r\nHo")
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hello from up1\n"
    slow.close()
    half.close()


def test_auto_listener_detects_http_and_closes_the_unknown(upstream, start_mesh):
    cfg = mesh_config([upstream.address], listener={"protocol": "auto"})
    gm = start_mesh(cfg)
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"hello from up1\n")
    # Sent a byte at a time, the method is still recognised once the space arrives.
    with socket.create_connection(("127.0.0.1", gm.port()), timeout=5) as s:
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n":
            s.sendall(bytes([b]))
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    assert raw_request(gm.port(), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == b""
    admin = int(cfg["admin"]["address"].rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    conn.request("GET", "/stats")
    assert "listener.ingress.downstream_cx_protocol_error: 1\n" in conn.getresponse().read().decode()
    # Text that no protocol claims gets HTTP/1.1's 400 and a close (binary: just the close).
    out = raw_request(gm.port(), b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out.lower()
    assert gm.stat("listener.ingress.downstream_cx_protocol_error") == 2


def test_requests_the_codec_refuses_are_counted_and_logged(upstream, start_mesh):
    """400/431 answered by the codec itself (no stream was made) count in downstream_rq_4xx
    and get an access-log line with DPE and why, as Envoy's do."""
    gm = start_mesh(mesh_config([upstream.address], listener={"max_request_headers_kb": 8}))
    assert raw_request(gm.port(), b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"
    assert raw_request(gm.port(), big).startswith(b"HTTP/1.1 431")
    assert gm.wait_stat("http.ingress.downstream_rq_4xx", 2) == 2
    assert gm.stat("http.ingress.downstream_rq_total") == 2
    lines = [(e["status"], e["flags"], e["details"]) for e in gm.access(2)]
    assert lines == [(400, "DPE", "missing host header"), (431, "DPE", "headers too large")]


def test_http09_http10_and_host_rules_on_the_wire(upstream, start_mesh):
    """HTTP/0.9 is refused with 400 (haproxy's answer: it cannot be proxied), HTTP/1.0 with
    Envoy's 426 unless the listener says accept_http_10, an HTTP/1.1 request without exactly
    one Host with 400; each closes the connection, and the listener goes on serving."""
    strict = mesh_config([upstream.address])
    gm = start_mesh(strict)
    assert raw_request(gm.port(), b"GET /\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    http10 = raw_request(gm.port(), b"GET / HTTP/1.0\r\n\r\n")
    assert http10.startswith(b"HTTP/1.1 426 ") and b"accept_http_10" in http10
    assert raw_request(gm.port(), b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    twice = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert twice.startswith(b"HTTP/1.1 400 ") and b"more than one host header" in twice
    assert raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                       ).startswith(b"HTTP/1.1 200 ")
    lenient = mesh_config([upstream.address], listener={"accept_http_10": True})
    gm2 = start_mesh(lenient)
    answer = raw_request(gm2.port(), b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello from up1\n")
