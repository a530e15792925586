"""Retries (Envoy's retry_policy) through the greenmesh process, against misbehaving upstreams."""

from __future__ import annotations

import http.client
import time

from tests.harness import RawUpstream, free_port, mesh_config, parse_stats, until


def failing(status: int = 503):
    def script(conn, index, head):
        conn.sendall(b"HTTP/1.1 %d Nope\r\nContent-Length: 4\r\n\r\nnope" % status)
    return RawUpstream(script)


def retry_config(endpoints: list[str], policy: dict, timeout: str = "5s") -> dict:
    return mesh_config(endpoints, routes=[{"match": {"prefix": "/"}, "route": {
        "cluster": "backend", "timeout": timeout, "retry_policy": policy}}])


def get(port: int, path: str = "/", method: str = "GET", body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    return resp.status, resp.read()


def stats(cfg: dict) -> dict[str, int]:
    port = int(cfg["admin"]["address"].rsplit(":", 1)[1])
    text = get(port, "/stats")[1].decode()
    return parse_stats(text)


def test_retry_succeeds_on_another_host(upstream, start_mesh):
    bad = failing()
    cfg = retry_config([bad.address, upstream.address], {"retry_on": "5xx", "num_retries": 1})
    gm = start_mesh(cfg)
    results = [get(gm.port()) for _ in range(10)]
    assert results == [(200, b"hello from up1\n")] * 10
    # Each retry advances the round robin too, so here every first try meets the bad host.
    assert 5 <= stats(cfg)["cluster.backend.upstream_rq_retry"] <= 10
    bad.stop()


def test_retries_give_up_and_forward_the_last_answer(start_mesh):
    a, b = failing(503), failing(502)
    cfg = retry_config([a.address, b.address], {"retry_on": "gateway-error", "num_retries": 3})
    gm = start_mesh(cfg)
    status, body = get(gm.port())
    assert status in (502, 503) and body == b"nope"
    assert stats(cfg)["cluster.backend.upstream_rq_retry"] == 3
    assert len(a.requests) + len(b.requests) == 4  # the first try and three retries
    a.stop()
    b.stop()


def test_retriable_status_codes_only_when_asked(upstream, start_mesh):
    conflict = failing(409)
    cfg = retry_config([conflict.address, upstream.address],
                       {"retry_on": "retriable-status-codes", "retriable_status_codes": [409]})
    gm = start_mesh(cfg)
    assert [get(gm.port())[0] for _ in range(4)] == [200] * 4
    cfg2 = retry_config([conflict.address, upstream.address], {"retry_on": "5xx"})
    gm2 = start_mesh(cfg2)
    assert sorted(get(gm2.port())[0] for _ in range(4)) == [200, 200, 409, 409]
    conflict.stop()


def test_per_try_timeout_moves_to_the_next_host(upstream, start_mesh):
    def slow(conn, index, head):
        time.sleep(2)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
    hang = RawUpstream(slow)
    cfg = retry_config([hang.address, upstream.address],
                       {"retry_on": "reset", "num_retries": 1, "per_try_timeout": "200ms"})
    gm = start_mesh(cfg)
    for _ in range(2):  # one of the two lands on the slow host first
        t0 = time.monotonic()
        assert get(gm.port()) == (200, b"hello from up1\n")
        assert time.monotonic() - t0 < 1.5
    hang.stop()


def test_connect_failure_retry_and_big_bodies_are_not_replayed(upstream, start_mesh):
    cfg = retry_config([f"127.0.0.1:{free_port()}", upstream.address],
                       {"retry_on": "connect-failure,5xx", "num_retries": 1})
    gm = start_mesh(cfg)
    assert [get(gm.port())[0] for _ in range(4)] == [200] * 4
    bad = failing()
    cfg2 = retry_config([bad.address, upstream.address], {"retry_on": "5xx"})
    gm2 = start_mesh(cfg2)
    big = b"x" * (200 * 1024)  # over the 64 KiB replay buffer: sent once, never again
    statuses = sorted(get(gm2.port(), "/sink", "POST", big)[0] for _ in range(2))
    assert statuses == [200, 503]
    small = sorted(get(gm2.port(), "/sink", "POST", b"small")[0] for _ in range(2))
    assert small == [200, 200]
    bad.stop()


def test_killed_host_is_ejected_and_clients_see_no_errors(start_mesh):
    from tests.harness import Upstream
    ups = [Upstream(f"o{i}") for i in range(3)]
    try:
        cfg = retry_config([u.address for u in ups],
                           {"retry_on": "connect-failure,reset,5xx", "num_retries": 2})
        cfg["clusters"][0]["outlier_detection"] = {"consecutive_5xx": 2,
                                                   "base_ejection_time": "30s",
                                                   "max_ejection_percent": 50}
        gm = start_mesh(cfg)
        statuses = [get(gm.port())[0] for _ in range(20)]
        ups[2].stop()  # killed mid-test: refused from now on
        statuses += [get(gm.port())[0] for _ in range(20)]
        s = stats(cfg)
        retries_then = s.get("cluster.backend.upstream_rq_retry", 0)
        statuses += [get(gm.port())[0] for _ in range(40)]
        assert statuses == [200] * 80  # retries hid the dead host from every client
        s = stats(cfg)
        assert s["cluster.backend.outlier_detection.ejections_total"] == 1
        # Once ejected, nothing goes to the dead host: no more retries are needed.
        assert s.get("cluster.backend.upstream_rq_retry", 0) == retries_then
    finally:
        for u in ups[:2]:
            u.stop()


def test_outlier_config_errors():
    import pytest

    from greenmesh.config import ConfigError, load_dict
    cfg = mesh_config(["127.0.0.1:1"], cluster={"outlier_detection": {
        "max_ejection_percent": 101, "base_ejection_time": "soon"}})
    with pytest.raises(ConfigError) as e:
        load_dict(cfg)
    assert e.value.errors == ["clusters[0].outlier_detection.base_ejection_time: expected a "
                              "duration such as 15s or 250ms",
                              "clusters[0].outlier_detection.max_ejection_percent: expected at "
                              "most 100"]


def test_health_checks_flip_hosts_out_and_back(upstream, start_mesh):
    state = {"healthy": True}

    def flaky(conn, index, head):
        status = 200 if state["healthy"] else 503
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\nX-Upstream: flaky\r\n\r\nflaky"
                     % status)
    up2 = RawUpstream(flaky)
    cfg = mesh_config([upstream.address, up2.address], cluster={"health_checks": [{
        "interval": "100ms", "timeout": "500ms", "unhealthy_threshold": 2,
        "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}]})
    gm = start_mesh(cfg)

    def served_by(n: int = 10) -> set:
        out = set()
        for _ in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            out.add(resp.getheader("x-upstream"))
        return out
    def flags() -> str:
        return gm.host_value("backend", up2.address, "health_flags")
    assert served_by() == {"up1", "flaky"}
    state["healthy"] = False
    assert until(lambda: flags() == "/failed_active_hc")  # two failed checks
    assert served_by() == {"up1"}
    state["healthy"] = True
    assert until(lambda: flags() == "healthy")  # one good check brings it back
    assert served_by() == {"up1", "flaky"}
    assert any(b"GET /healthz " in r for r in up2.requests)
    up2.stop()


def test_all_hosts_unhealthy_is_panic_not_an_outage(start_mesh):
    def down_but_serving(conn, index, head):  # fails its check, answers traffic
        code = 503 if b"/healthz" in head else 200
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % code)
    a, b = RawUpstream(down_but_serving), RawUpstream(down_but_serving)
    cfg = mesh_config([a.address, b.address], cluster={"health_checks": [{
        "interval": "100ms", "unhealthy_threshold": 1, "http_health_check": {"path": "/healthz"}}]})
    gm = start_mesh(cfg)
    assert until(lambda: all(gm.host_value("backend", u.address, "health_flags")
                             == "/failed_active_hc" for u in (a, b)))
    assert [get(gm.port())[0] for _ in range(4)] == [200] * 4  # panic: all hosts used
    a.stop()
    b.stop()


def test_circuit_breakers_max_requests_and_max_retries(upstream, start_mesh):
    import threading
    cfg = mesh_config([upstream.address], cluster={"max_requests": 1})
    gm = start_mesh(cfg)
    results = []
    ts = [threading.Thread(target=lambda: results.append(get(gm.port(), "/delay/0.3")))
          for _ in range(2)]
    ts[0].start()
    assert until(lambda: gm.host_stat("backend", upstream.address, "rq_active") == 1)
    ts[1].start()
    for t in ts:
        t.join()
    assert sorted(s for s, _ in results) == [200, 503]
    assert stats(cfg)["cluster.backend.upstream_rq_overflow"] == 1
    bad = failing()
    cfg2 = retry_config([bad.address, upstream.address], {"retry_on": "5xx", "num_retries": 1})
    cfg2["clusters"][0]["max_retries"] = 0
    gm2 = start_mesh(cfg2)
    assert sorted(get(gm2.port())[0] for _ in range(2)) == [200, 503]  # no retry allowed
    assert stats(cfg2)["cluster.backend.upstream_rq_retry_overflow"] == 1
    bad.stop()


def test_route_idle_timeout_cuts_a_stalled_stream(start_mesh):
    def stall(conn, index, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        time.sleep(3)
    up = RawUpstream(stall)
    cfg = mesh_config([up.address], routes=[{"match": {"prefix": "/"}, "route": {
        "cluster": "backend", "timeout": "0s", "idle_timeout": "300ms"}}])
    gm = start_mesh(cfg)
    from tests.harness import raw_request
    t0 = time.monotonic()
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"first" in out and not out.endswith(b"0\r\n\r\n")
    assert 0.25 < time.monotonic() - t0 < 2  # cut when idle, though the route has no timeout
    up.stop()


def test_tcp_health_check_and_auto_host_rewrite(upstream, start_mesh):
    dead = f"127.0.0.1:{free_port()}"
    cfg = mesh_config([dead, upstream.address], routes=[{"match": {"prefix": "/"}, "route": {
        "cluster": "backend", "auto_host_rewrite": True}}],
        cluster={"health_checks": [{"interval": "100ms", "unhealthy_threshold": 1,
                                    "tcp_health_check": {}}]})
    gm = start_mesh(cfg)
    assert until(lambda: gm.host_value("backend", dead, "health_flags") == "/failed_active_hc")
    import json
    for _ in range(4):
        status, body = get(gm.port(), "/echo")
        assert status == 200
        assert json.loads(body.split(b"\n", 1)[0])["headers"]["host"] == upstream.address


def test_source_ip_hash_is_sticky(start_mesh):
    from tests.harness import Upstream
    ups = [Upstream(f"s{i}") for i in range(3)]
    try:
        cfg = mesh_config([u.address for u in ups], cluster={"lb_policy": "ring_hash"}, routes=[
            {"match": {"prefix": "/"}, "route": {
                "cluster": "backend",
                "hash_policy": [{"connection_properties": {"source_ip": True}}]}}])
        gm = start_mesh(cfg)
        seen = set()
        for _ in range(6):
            conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            seen.add(resp.getheader("x-upstream"))
        assert len(seen) == 1  # one client address, one host
    finally:
        for u in ups:
            u.stop()


def test_ejections_grow_and_respect_the_cap():
    from greenmesh import model
    from greenmesh.stats import Stats
    from greenmesh.streams import default_registry
    from greenmesh.upstream.manager import ClusterManager
    cm = ClusterManager(default_registry(), Stats())
    od = model.OutlierDetection(consecutive_5xx=1, base_ejection_time=10.0,
                                max_ejection_time=25.0, max_ejection_percent=30)
    eps = tuple(model.Endpoint(model.Address("127.0.0.1", 9000 + i)) for i in range(4))
    cm.update([model.Cluster(name="c", endpoints=eps, outlier_detection=od)])
    snap = cm.get("c")
    a, b = snap.hosts[0], snap.hosts[1]
    now = time.monotonic()
    snap.record(a, 503)
    assert 9 < a.health.ejected_until - now < 11  # first ejection: base time
    cm.get("c").record(b, 0)
    assert b.health.ejected_until == 0.0  # a second would exceed 30% of 4 hosts
    a.health.ejected_until = 0.0
    cm.refresh("c")
    cm.get("c").record(a, 500)
    assert 19 < a.health.ejected_until - time.monotonic() < 21  # second: twice as long
    a.health.ejected_until = 0.0
    cm.get("c").record(a, 500)
    assert a.health.ejected_until - time.monotonic() < 26  # capped at max_ejection_time
    cm.close()


def test_consecutive_gateway_failures_eject_but_other_5xx_do_not():
    from greenmesh import model
    from greenmesh.stats import Stats
    from greenmesh.streams import default_registry
    from greenmesh.upstream.manager import ClusterManager
    cm = ClusterManager(default_registry(), Stats())
    od = model.OutlierDetection(consecutive_5xx=0, consecutive_gateway_failure=2,
                                enforcing_consecutive_gateway_failure=100,
                                max_ejection_percent=100)
    eps = tuple(model.Endpoint(model.Address("127.0.0.1", 9100 + i)) for i in range(2))
    cm.update([model.Cluster(name="g", endpoints=eps, outlier_detection=od)])
    host = cm.get("g").hosts[0]
    for status in (500, 500, 500, 200, 503):
        cm.get("g").record(host, status)
    assert host.health.ejected_until == 0.0  # 500s are not gateway failures; 200 resets
    cm.get("g").record(host, 0)  # a connect failure is one
    assert host.health.ejected_until > time.monotonic()
    cm.close()


def test_previous_hosts_steers_a_retry_away_from_the_host_that_failed(upstream, start_mesh):
    """ring_hash sends a key to the same host every time, so a retry without a host predicate
    meets the refusing host again; with Envoy's previous_hosts it picks another."""
    dead = f"127.0.0.1:{free_port()}"

    def route(prefix: str, predicate: bool) -> dict:
        policy = {"retry_on": "connect-failure", "num_retries": 1}
        if predicate:
            policy["retry_host_predicate"] = [
                {"name": "envoy.retry_host_predicates.previous_hosts"}]
            policy["host_selection_retry_max_attempts"] = 20
        return {"match": {"prefix": prefix}, "route": {
            "cluster": "backend", "retry_policy": policy,
            "hash_policy": [{"header": {"header_name": "x-key"}}]}}
    cfg = mesh_config([dead, upstream.address], routes=[route("/plain", False),
                                                         route("/prev", True)],
                      cluster={"lb_policy": "ring_hash"})
    gm = start_mesh(cfg)

    def status(path: str, key: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=10)
        conn.request("GET", path, headers={"x-key": key})
        return conn.getresponse().status
    on_dead = [k for k in (f"k{i}" for i in range(30)) if status("/plain", k) == 503]
    assert on_dead  # some keys hash to the refusing host: their retry went there again
    assert [status("/prev", k) for k in on_dead] == [200] * len(on_dead)
