"""The in-process client (``mesh.http``, ``mesh.bolt``): calls from the application's own process
through the same proxy as a listener's streams. The mesh runs in the test's process (gevent,
not monkey-patched) against real upstream processes and peers; what needs a process of its own
(a memory bound, grpcio for xDS) runs ``tests/inprocess_app.py``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import gevent
import pytest

from greenmesh.client.errors import MeshStopped, NoRoute, UpstreamTimeout, UpstreamUnavailable
from greenmesh.config import load_dict
from greenmesh.failures import ResponseFlag
from greenmesh.mesh import Mesh
from tests.boltpeer import BoltServer
from tests.h2server import H2Upstream
from tests.harness import ROOT, RawUpstream, free_port


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """``until`` for the test's own gevent loop: the mesh runs while this waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


def outbound(*vhosts: dict, clusters: list[dict], name: str = "outbound", **extra) -> dict:
    return {"route_configs": [{"name": name, "virtual_hosts": list(vhosts)}],
            "clusters": clusters, **extra}


def vhost(domain: str, cluster: str, **route) -> dict:
    return {"name": domain, "domains": [domain],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, **route}}]}


def one_service(mesh, address: str) -> Mesh:
    """A mesh whose calls to http://svc/ go to ``address``."""
    return mesh(outbound(vhost("svc", "c"), clusters=[{"name": "c", "endpoints": [address]}]))


def echo(resp) -> dict:
    """The test upstream's /echo: a JSON line about the request, then its body."""
    return json.loads(resp.content.split(b"\n", 1)[0])


@pytest.fixture
def mesh():
    meshes: list[Mesh] = []

    def make(config: dict) -> Mesh:
        m = Mesh(load_dict(config)).start()
        meshes.append(m)
        return m
    yield make
    for m in meshes:
        if m.running:
            m.stop(timeout=1)


def test_routes_by_authority_with_rewrites_header_ops_and_named_route_configs(make_upstream,
                                                                                mesh):
    users, search = make_upstream("users"), make_upstream("search")
    cfg = outbound(
        vhost("users", "users", prefix_rewrite="/echo/"),
        {"name": "search", "domains": ["search", "search:8080"],
         "request_headers_to_add": [{"header": {"key": "x-via", "value": "outbound"}}],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "search"}}]},
        clusters=[{"name": "users", "endpoints": [users.address]},
                  {"name": "search", "endpoints": [search.address]}])
    cfg["route_configs"].append({"name": "admin-calls", "virtual_hosts": [
        vhost("users", "search")]})
    m = mesh(cfg)
    r = m.http.get("http://users/v1/1", params={"q": "a b"}, headers={"X-Trace": "t1"})
    assert r.status_code == 200 and r.headers["X-Upstream"] == "users"
    seen = echo(r)
    assert seen["path"] == "/echo/v1/1" and seen["query"] == "q=a+b"
    assert seen["headers"]["x-trace"] == "t1" and seen["headers"]["host"] == "users"
    assert len(seen["headers"]["x-request-id"]) == 36  # Envoy's generate_request_id
    r = m.http.post("http://search:8080/echo", json={"k": [1, 2]})
    assert r.headers["x-upstream"] == "search"
    seen = echo(r)
    assert seen["headers"]["x-via"] == "outbound"
    assert seen["headers"]["content-type"] == "application/json"
    assert r.content.split(b"\n", 1)[1] == b'{"k": [1, 2]}'
    assert m.http.using("admin-calls").get("http://users/").headers["x-upstream"] == "search"
    with pytest.raises(NoRoute) as e:
        m.http.get("http://nobody/")
    assert e.value.flags == [ResponseFlag.NO_ROUTE_FOUND] and e.value.status == 404
    with pytest.raises(NoRoute) as e:
        m.http.using("missing").get("http://users/")
    assert e.value.flag is ResponseFlag.NO_ROUTE_FOUND
    # An upstream's own error status is a response, not an exception.
    assert m.http.get("http://search/status/503").status_code == 503
    s = m.stats.counters  # counted as the proxy ends each call, after its caller has it
    assert wait_for(lambda: s["http.inprocess.downstream_rq_total"] == 6)
    assert s["http.inprocess.downstream_rq_http_total"] == 6
    assert s["http.inprocess.downstream_rq_4xx"] == 2


def test_calls_are_logged_through_the_standard_logging(make_upstream, mesh, caplog, capsys):
    up = make_upstream("u")
    caplog.set_level(logging.INFO, logger="greenmesh")
    m = one_service(mesh, up.address)
    m.http.get("http://svc/hello", headers={"user-agent": "app/1"})
    assert wait_for(lambda: any(r.name == "greenmesh.access" for r in caplog.records))
    access = [r.getMessage() for r in caplog.records if r.name == "greenmesh.access"]
    assert access[0].startswith("access listener=inprocess protocol=http method=GET")
    assert "path=/hello status=200 flags=-" in access[0] and "user_agent=app/1" in access[0]
    assert any(r.getMessage().startswith("mesh_started") for r in caplog.records)
    assert capsys.readouterr().out == ""  # nothing printed through an unconfigured structlog
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="greenmesh")  # the host's level decides
    m.http.get("http://svc/hello")  # its line, if any, is written before the call returns
    assert not [r for r in caplog.records if r.name.startswith("greenmesh")]


def test_a_failing_host_is_retried_on_another(upstream, mesh):
    dead = f"127.0.0.1:{free_port()}"  # refuses connections
    m = mesh(outbound(vhost("svc", "c", retry_policy={"retry_on": "connect-failure",
                                                      "num_retries": 2}),
                      clusters=[{"name": "c", "lb_policy": "round_robin",
                                 "endpoints": [dead, upstream.address]}]))
    assert [m.http.get("http://svc/").status_code for _ in range(10)] == [200] * 10
    assert m.stats.counters["cluster.c.upstream_rq_retry"] >= 4
    # Without a retry policy the failure reaches the caller, with Envoy's flag.
    m2 = one_service(mesh, dead)
    with pytest.raises(UpstreamUnavailable) as e:
        m2.http.get("http://svc/")
    assert e.value.flag is ResponseFlag.UPSTREAM_CONNECTION_FAILURE and e.value.status == 503
    assert isinstance(e.value, ConnectionError)


def test_route_timeout_and_the_calls_own_timeout(upstream, mesh):
    m = mesh(outbound(vhost("fast", "c", timeout="0.3s"), vhost("slow", "c", timeout="20s"),
                      clusters=[{"name": "c", "endpoints": [upstream.address]}]))
    began = time.monotonic()
    with pytest.raises(UpstreamTimeout) as e:
        m.http.get("http://fast/delay/5")
    assert e.value.flag is ResponseFlag.UPSTREAM_REQUEST_TIMEOUT and e.value.status == 504
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(UpstreamTimeout):
        m.http.get("http://slow/delay/5", timeout=0.3)  # the call's timeout replaces the route's
    assert time.monotonic() - began < 4
    assert m.http.get("http://fast/delay/0.5", timeout=5).status_code == 200
    assert m.stats.counters["cluster.c.upstream_rq_timeout"] == 2
    with pytest.raises(ValueError):
        m.http.get("http://fast/", timeout=0)


def test_circuit_breaker_overflow(upstream, mesh):
    m = mesh(outbound(vhost("svc", "c"), clusters=[{"name": "c", "max_requests": 1,
                                                    "endpoints": [upstream.address]}]))
    first = gevent.spawn(m.http.get, "http://svc/delay/0.5")
    assert wait_for(lambda: m.stats.counters["http.inprocess.downstream_rq_active"] == 1)
    with pytest.raises(UpstreamUnavailable) as e:
        m.http.get("http://svc/")
    assert e.value.flag is ResponseFlag.UPSTREAM_OVERFLOW and e.value.status == 503
    assert first.get(timeout=10).status_code == 200
    assert m.stats.counters["cluster.c.upstream_rq_overflow"] == 1


def test_outlier_detection_ejects_a_failing_host(upstream, mesh):
    bad = RawUpstream(lambda conn, index, head: conn.sendall(
        b"HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n"))
    try:
        m = mesh(outbound(vhost("svc", "c"), clusters=[{
            "name": "c", "lb_policy": "round_robin",
            "endpoints": [upstream.address, f"127.0.0.1:{bad.port}"],
            "outlier_detection": {"consecutive_5xx": 3, "base_ejection_time": "30s",
                                  "max_ejection_percent": 50}}]))
        statuses = [m.http.get("http://svc/").status_code for _ in range(10)]
        assert statuses.count(503) == 3  # then it was ejected
        assert m.stats.counters["cluster.c.outlier_detection.ejections_total"] == 1
        assert [m.http.get("http://svc/").status_code for _ in range(10)] == [200] * 10
    finally:
        bad.stop()


def test_an_h2_upstream_from_plain_python(mesh):
    up = H2Upstream()
    try:
        m = mesh(outbound(vhost("grpcish", "h2"), clusters=[{
            "name": "h2", "protocol": "http2", "endpoints": [f"127.0.0.1:{up.port}"]}]))
        results = gevent.joinall([gevent.spawn(m.http.post, "http://grpcish/svc/M",
                                               data=b"body-%d" % i) for i in range(10)])
        for i, g in enumerate(results):
            r = g.get()
            assert r.status_code == 200 and r.content == b"body-%d" % i
            assert r.trailers["grpc-status"] == "0"
        assert len({g.get().headers["x-conn"] for g in results}) == 1  # multiplexed
        streamed = m.http.post("http://grpcish/up", data=iter([b"a" * 9000, b"b" * 5]))
        assert streamed.content == b"a" * 9000 + b"b" * 5
    finally:
        up.stop()


def test_a_caller_that_gives_up_resets_the_upstream_stream(upstream, mesh):
    m = one_service(mesh, upstream.address)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.2):
        m.http.get("http://svc/delay/3")
    # A streamed response closed before its end.
    with m.http.get("http://svc/bytes/50000000", stream=True) as r:
        assert len(next(r.iter_content())) > 0
    cluster = m.clusters.get("c")
    assert wait_for(lambda: m.stats.counters["http.inprocess.downstream_rq_active"] == 0)
    assert wait_for(lambda: cluster is not None and all(
        h.pool.active == 0 for h in cluster.hosts))
    assert m.http.get("http://svc/").status_code == 200


def test_a_request_body_iterable_that_raises_gives_the_caller_its_exception(upstream, mesh):
    m = one_service(mesh, upstream.address)

    def body():
        yield b"part"
        raise KeyError("app bug")
    with pytest.raises(KeyError, match="app bug"):
        m.http.post("http://svc/sink", data=body())
    assert m.http.post("http://svc/sink", data=iter([b"x" * 10] * 3)).text == "30\n"


def test_bolt_invoke_against_a_bolt_peer(mesh):
    peer = BoltServer()
    try:
        m = mesh(outbound({"name": "rpc", "domains": ["*"], "routes": [
            {"match": {"headers": [{"name": "service", "string_match": {
                "exact": "com.example.EchoService:1.0"}}]},
             "route": {"cluster": "echo", "timeout": "3s"}}]},
            clusters=[{"name": "echo", "protocol": "bolt",
                       "endpoints": [f"127.0.0.1:{peer.port}"]}]))
        results = gevent.joinall([gevent.spawn(
            m.bolt.invoke, "com.example.EchoService:1.0", "echo", b"hi-%d" % i,
            headers={"trace": f"t{i}"}) for i in range(20)])
        for i, g in enumerate(results):
            r = g.get()
            assert r.ok and r.status == 0 and r.content == b"echo:hi-%d" % i
        assert any(("trace", "t0") in h for h in peer.headers)
        assert ("sofa_head_method_name", "echo") in peer.headers[0]
        assert m.bolt.invoke("com.example.EchoService:1.0", "echo", b"x", oneway=True) is None
        assert wait_for(lambda: peer.oneways == 1)
        with pytest.raises(UpstreamTimeout):
            m.bolt.invoke("com.example.EchoService:1.0", "echo", b"sleep:2:x", timeout=0.2)
        with pytest.raises(NoRoute):
            m.bolt.invoke("com.example.Other:1.0", "echo", b"x")
        assert wait_for(lambda: m.stats.counters["http.inprocess.downstream_rq_bolt_total"] == 23)
    finally:
        peer.stop()


def test_stop_lets_calls_in_flight_finish_then_calls_fail_fast(upstream, mesh):
    m = one_service(mesh, upstream.address)
    inflight = gevent.spawn(m.http.get, "http://svc/delay/0.5")
    assert wait_for(lambda: m.stats.counters["http.inprocess.downstream_rq_active"] == 1)
    m.stop(timeout=5)
    assert inflight.get(timeout=1).status_code == 200
    began = time.monotonic()
    with pytest.raises(MeshStopped, match="not running"):
        m.http.get("http://svc/")
    with pytest.raises(MeshStopped):
        m.bolt.invoke("s", "m")
    assert time.monotonic() - began < 0.5
    m.start()  # and again
    assert m.http.get("http://svc/").status_code == 200


def test_a_call_cut_off_by_stop_gets_an_error(upstream, mesh):
    m = one_service(mesh, upstream.address)
    inflight = gevent.spawn(m.http.get, "http://svc/delay/5")
    assert wait_for(lambda: m.stats.counters["http.inprocess.downstream_rq_active"] == 1)
    m.stop(timeout=0.2)
    with pytest.raises(MeshStopped):
        inflight.get(timeout=2)


def _app(args: list[str], timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.inprocess_app", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_100mb_streamed_both_ways_in_bounded_memory(upstream):
    proc = _app(["stream", upstream.address, str(100 << 20)])
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["sent"] == str(100 << 20) and result["received"] == 100 << 20
    assert result["grew_kb"] < 16 * 1024, result  # 100 MB each way through 16 MB at most


def test_routes_and_clusters_from_the_control_plane(make_upstream):
    from greenmesh.testing.controlplane import ControlPlane
    from greenmesh.xds.resources import CDS, RDS
    from tests.test_xds import route_config, static_cluster
    a, b = make_upstream("a"), make_upstream("b")
    cp = ControlPlane()
    proc = _app(["xds", str(cp.port)])
    try:
        def lines(n: int) -> list[str]:
            got = []
            while len(got) < n:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                got.append(line.strip())
            return got
        assert lines(1) == ["NR"]  # before any route came: no route
        cp.set(CDS, [static_cluster("svc", a.address), static_cluster("other", b.address)])
        cp.set(RDS, [route_config("outbound", "svc")])
        assert lines(1) == ["a"]
        cp.set(RDS, [route_config("outbound", "other")])
        assert lines(1) == ["b"]
    finally:
        proc.kill()
        proc.wait()
        cp.stop()


def test_a_streamed_response_dropped_unread_frees_its_upstream_stream(upstream, mesh):
    m = one_service(mesh, upstream.address)
    resp = m.http.get("http://svc/bytes/50000000", stream=True)
    cluster = m.clusters.get("c")
    assert cluster is not None and cluster.hosts[0].pool.active == 1
    del resp  # never read, never closed
    assert wait_for(lambda: all(h.pool.active == 0 for h in cluster.hosts))
    assert wait_for(lambda: m.stats.counters["http.inprocess.downstream_rq_active"] == 0)
