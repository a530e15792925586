"""The router's matchers and actions (Envoy's route API): unit tests through the config
loader, and end to end through the greenmesh process with the echo upstream."""

from __future__ import annotations

import http.client
import json
from collections import Counter

import pytest

from greenmesh.config import load_dict
from greenmesh.router import RouteTable
from greenmesh.streams.base import RequestHead
from tests.harness import mesh_config

CLUSTERS = [{"name": n} for n in ("a", "b", "c")]


def table(routes: list[dict], domains=("*",), **vhost) -> RouteTable:
    cfg = load_dict({"route_configs": [{"name": "t", "virtual_hosts": [
        {"name": "v", "domains": list(domains), "routes": routes, **vhost}]}],
        "clusters": CLUSTERS})
    return RouteTable(cfg.route_configs[0])


def head(path: str = "/", host: str = "h", headers: dict | None = None) -> RequestHead:
    return RequestHead(b"GET", path.encode(), host.encode(), b"http",
                       [(k.encode(), v.encode()) for k, v in (headers or {}).items()])


def cluster(t: RouteTable, h: RequestHead) -> str | None:
    m = t.match(h)
    return m.cluster_name(h) if m else None


def to(c: str, **match) -> dict:
    return {"match": match, "route": {"cluster": c}}


def test_prefix_wildcard_domains_come_after_suffixes():
    cfg = load_dict({"route_configs": [{"name": "t", "virtual_hosts": [
        {"name": "p", "domains": ["api.*"], "routes": [to("a", prefix="/")]},
        {"name": "s", "domains": ["*.example.com"], "routes": [to("b", prefix="/")]},
        {"name": "d", "domains": ["*"], "routes": [to("c", prefix="/")]}]}],
        "clusters": CLUSTERS})
    t = RouteTable(cfg.route_configs[0])
    assert cluster(t, head(host="api.internal")) == "a"
    assert cluster(t, head(host="api.example.com")) == "b"  # the suffix wins, as in Envoy
    assert cluster(t, head(host="web.internal")) == "c"


def test_path_matchers():
    t = table([to("a", safe_regex="/v[0-9]+/items"), to("b", path_separated_prefix="/api"),
               to("c", prefix="/CaSe", case_sensitive=False)])
    assert cluster(t, head("/v12/items?x=1")) == "a"  # the query is not part of the path
    assert cluster(t, head("/v12/items/1")) != "a"  # a full match, not a search
    assert cluster(t, head("/api")) == "b" and cluster(t, head("/api/x")) == "b"
    assert cluster(t, head("/apix")) != "b"
    assert cluster(t, head("/case/y")) == "c" and cluster(t, head("/CASE")) == "c"


def test_query_parameter_matchers():
    t = table([{"match": {"prefix": "/", "query_parameters": [
        {"name": "debug", "string_match": {"exact": "1"}}, {"name": "user"}]},
        "route": {"cluster": "a"}}, to("b", prefix="/")])
    assert cluster(t, head("/x?debug=1&user=me")) == "a"
    assert cluster(t, head("/x?user=me&debug=%31")) == "a"  # values are URL-decoded
    assert cluster(t, head("/x?debug=1")) == "b" and cluster(t, head("/x")) == "b"


def test_weighted_clusters_split_within_2_percent():
    t = table([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 70}, {"name": "b", "weight": 20}, {"name": "c", "weight": 10}]}}}])
    counts = Counter(cluster(t, head()) for _ in range(10000))
    for name, share in (("a", 0.7), ("b", 0.2), ("c", 0.1)):
        assert abs(counts[name] / 10000 - share) < 0.02, counts


def test_cluster_header():
    t = table([{"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}])
    assert cluster(t, head(headers={"x-cluster": "b"})) == "b"
    assert cluster(t, head()) is None


def test_route_config_errors_name_the_key():
    from greenmesh.config import ConfigError
    with pytest.raises(ConfigError) as e:
        table([{"match": {"prefix": "/", "path": "/x"}, "route": {"cluster": "a"}},
               {"match": {"prefix": "/"}, "route": {"cluster": "a"}, "redirect": {}},
               {"match": {"prefix": "/"}, "redirect": {"response_code": 200}}])
    p = "route_configs[0].virtual_hosts[0].routes"
    assert e.value.errors == [
        f"{p}[0].match: expected at most one of prefix, path, safe_regex, path_separated_prefix",
        f"{p}[1]: expected exactly one of route, direct_response, redirect",
        f"{p}[2].redirect.response_code: expected 301, 302, 303, 307 or 308 (or Envoy's names, "
        "e.g. MOVED_PERMANENTLY)",
    ]
    with pytest.raises(ConfigError) as e:  # references are checked once the shapes are right
        table([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "nope", "weight": 1}]}}}])
    assert e.value.errors == [
        f"{p}[0].route.weighted_clusters.clusters[0].name: unknown cluster 'nope'"]


def request(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def echo_meta(body: bytes) -> dict:
    return json.loads(body.split(b"\n", 1)[0])


def test_actions_end_to_end(upstream, start_mesh):
    cfg = mesh_config([upstream.address], routes=[
        {"match": {"path": "/health"}, "direct_response": {"status": 200,
                                                           "body": {"inline_string": "ok\n"}}},
        {"match": {"prefix": "/old/"}, "redirect": {"prefix_rewrite": "/new/",
                                                    "response_code": "PERMANENT_REDIRECT"}},
        {"match": {"prefix": "/secure"}, "redirect": {"https_redirect": True,
                                                      "host_redirect": "example.com",
                                                      "strip_query": True}},
        {"match": {"prefix": "/api/"},
         "route": {"cluster": "backend", "prefix_rewrite": "/echo/",
                   "host_rewrite_literal": "internal.svc"},
         "request_headers_to_add": [{"header": {"key": "x-route", "value": "api"}},
                                    {"header": {"key": "x-env", "value": "route"},
                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
         "request_headers_to_remove": ["x-secret"],
         "response_headers_to_add": [{"header": {"key": "x-served-by", "value": "greenmesh"}}],
         "response_headers_to_remove": ["x-upstream-connections"]},
        {"match": {"safe_regex": "/v[0-9]+/echo.*"},
         "route": {"cluster": "backend", "regex_rewrite": {"pattern": {"regex": "^/v[0-9]+"},
                                                          "substitution": ""}}},
    ])
    vh = cfg["route_configs"][0]["virtual_hosts"][0]
    vh["request_headers_to_add"] = [{"header": {"key": "x-vhost", "value": "v"}}]
    cfg["route_configs"][0]["response_headers_to_add"] = [
        {"header": {"key": "x-config", "value": "c"}}]
    gm = start_mesh(cfg)
    port = gm.port()
    assert request(port, "/health")[::2] == (200, b"ok\n")
    status, headers, _ = request(port, "/old/page?q=1")
    assert status == 308 and headers["location"] == f"http://127.0.0.1:{port}/new/page?q=1"
    status, headers, _ = request(port, "/secure/x?token=1")
    assert status == 301 and headers["location"] == "https://example.com/secure/x"
    status, headers, body = request(port, "/api/x?y=2", {"X-Secret": "s", "X-Env": "client"})
    meta = echo_meta(body)
    assert status == 200 and meta["path"] == "/echo/x" and meta["query"] == "y=2"
    h = meta["headers"]
    assert h["host"] == "internal.svc" and h["x-route"] == "api" and h["x-vhost"] == "v"
    assert h["x-env"] == "route" and "x-secret" not in h
    assert headers["x-served-by"] == "greenmesh" and headers["x-config"] == "c"
    assert "x-upstream-connections" not in headers
    status, _, body = request(port, "/v2/echo?z=1")
    assert status == 200 and echo_meta(body)["path"] == "/echo"


def test_hash_policy_end_to_end(start_mesh):
    from tests.harness import Upstream
    ups = [Upstream(f"h{i}") for i in range(3)]
    try:
        cfg = mesh_config([u.address for u in ups], routes=[{"match": {"prefix": "/"}, "route": {
            "cluster": "backend", "hash_policy": [{"header": {"header_name": "x-user"}},
                                                  {"cookie": {"name": "session"}}]}}],
            cluster={"lb_policy": "maglev"})
        gm = start_mesh(cfg)
        for user in ("alice", "bob", "carol", "dave"):
            seen = {request(gm.port(), "/", {"x-user": user})[1]["x-upstream"]
                    for _ in range(5)}
            assert len(seen) == 1, (user, seen)  # sticky
        by_cookie = {request(gm.port(), "/", {"cookie": "a=1; session=s42"})[1]["x-upstream"]
                     for _ in range(5)}
        assert len(by_cookie) == 1
        spread = {request(gm.port(), "/", {"x-user": f"u{i}"})[1]["x-upstream"]
                  for i in range(60)}
        assert spread == {"h0", "h1", "h2"}
    finally:
        for u in ups:
            u.stop()


def test_request_mirroring_is_fire_and_forget(upstream, start_mesh):
    import threading

    from tests.harness import RawUpstream, until
    seen = []
    release = threading.Event()

    def shadow(conn, index, head):
        seen.append(head)
        release.wait(10)  # the shadow answers only after the real answer has arrived
        conn.sendall(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n")
    mirror = RawUpstream(shadow)
    cfg = mesh_config([upstream.address], routes=[{"match": {"prefix": "/"}, "route": {
        "cluster": "backend", "request_mirror_policies": [{"cluster": "shadow"}]}}])
    cfg["clusters"].append({"name": "shadow", "endpoints": [{"address": mirror.address}]})
    gm = start_mesh(cfg)
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    conn.request("POST", "/echo", body=b"mirrored body", headers={"Host": "api.example"})
    resp = conn.getresponse()  # (a proxy waiting for its shadow would time out here)
    body = resp.read()
    assert resp.status == 200 and body.endswith(b"mirrored body")  # the real answer
    release.set()
    assert until(lambda: seen)
    assert seen[0].startswith(b"POST /echo HTTP/1.1")
    assert b"host: api.example-shadow" in seen[0].lower()
    mirror.stop()
