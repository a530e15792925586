"""Stream filters (``http_filters``) through the greenmesh process: each phase, the filters that
ship, user filters by import path and by entry point, containment, per-route overrides, over
HTTP/1.1, HTTP/2 and bolt."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from greenmesh.config import ConfigError, load_dict
from tests.boltpeer import BoltClient, BoltServer, parse_header_map, request
from tests.h2client import H2Client
from tests.harness import ROOT, free_port, mesh_config, until

SERVICE = "com.example.EchoService:1.0"


def py(cls: str, config: dict | None = None, name: str | None = None) -> dict:
    """A ``greenmesh.filters.python`` entry for a class of tests/sample_filters.py."""
    return {"name": name or cls.lower(), "typed_config": {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "greenmesh.filters.python",
        "value": {"class": f"tests.sample_filters:{cls}", "config": config or {}}}}


def fault(**kw) -> dict:
    return {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault", **kw}}


def ratelimit(max_tokens: int, prefix: str = "rl") -> dict:
    return {"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3"
                     ".LocalRateLimit",
            "stat_prefix": prefix,
            "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": 1,
                             "fill_interval": "3600s"},
            "filter_enabled": {"default_value": {"numerator": 100}},
            "filter_enforced": {"default_value": {"numerator": 100}}}


def http_get(port: int, path: str = "/", headers: dict | None = None, method: str = "GET",
             body: bytes | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def with_filters(endpoints: list[str], filters: list[dict], routes: list | None = None,
                 listener: dict | None = None, cluster: dict | None = None) -> dict:
    return mesh_config(endpoints, routes=routes,
                       listener={"http_filters": filters, **(listener or {})}, cluster=cluster)


def test_each_phase_sees_what_it_should_over_http1_and_http2(upstream, start_mesh):
    routes = [{"name": "all", "match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    cfg = with_filters([upstream.address], [py("Phases", {"tag": "t1"})], routes)
    h2 = {"name": "h2", "address": f"127.0.0.1:{free_port()}", "protocol": "http2",
          "route_config": "default", "http_filters": [py("Phases", {"tag": "t2"})]}
    cfg["listeners"].append(h2)
    gm = start_mesh(cfg)
    resp = http_get(gm.port(), "/echo")
    assert resp.status == 200
    assert resp.getheader("x-phases") == \
        "before_route:True,after_route:all:backend,after_host:yes"
    seen = json.loads(resp.body[:int(resp.getheader("x-echo-meta"))])
    assert seen["headers"]["x-from-filter"] == "t1"  # the request header a filter set
    c = H2Client(gm.port(1))
    sid = c.request("GET", "/echo")
    c.pump(lambda: c.done(sid))
    r = c.responses[sid]
    assert r.status == 200
    assert dict(r.headers)[b"x-phases"] == \
        b"before_route:True,after_route:all:backend,after_host:yes"
    assert b'"x-from-filter": "t2"' in r.body
    c.close()


def test_local_reply_and_a_blocking_call_from_a_filter(upstream, start_mesh):
    filters = [py("Deny"), py("AskService", {"port": upstream.port})]
    gm = start_mesh(with_filters([upstream.address], filters))
    denied = http_get(gm.port(), "/", {"x-deny": "1"})
    assert (denied.status, denied.body) == (403, b"denied by filter\n")
    assert denied.getheader("x-denied-by") == "Deny"
    # The quota "service" is called from the stream's greenlet; its answer decides.
    assert http_get(gm.port(), "/", {"x-quota": "503"}).status == 429
    ok = http_get(gm.port(), "/")
    assert (ok.status, ok.body) == (200, b"hello from up1\n")
    entries = gm.access(3)
    assert [e["status"] for e in entries] == [403, 429, 200]
    assert entries[2]["metadata"] == {"quota": {"status": 200}}  # dynamic metadata logged
    assert gm.stat("http.ingress.downstream_rq_4xx") == 2


def test_a_raising_filter_costs_only_its_own_stream(upstream, start_mesh):
    cfg = with_filters([upstream.address], [py("Boom")])
    cfg["listeners"][0]["protocol"] = "auto"
    gm = start_mesh(cfg)
    bad = http_get(gm.port(), "/", {"x-boom": "1"})
    assert (bad.status, bad.body) == (500, b"filter error\n")  # the exception's text stays in
    assert http_get(gm.port(), "/").status == 200
    errors = gm.wait_log("filter_error")
    assert errors[0]["filter"] == "boom" and "boom from a user filter" in errors[0]["error"]
    assert "Traceback" in errors[0]["traceback"]
    assert gm.stat("http.ingress.filter.boom.errors") == 1
    # HTTP/2: the failing stream gets 500, the one beside it on the same connection its answer.
    c = H2Client(gm.port())
    good = c.request("GET", "/delay/0.2")
    boom = c.request("GET", "/", headers=[("x-boom", "1")])
    c.pump(lambda: c.done(good, boom))
    assert (c.responses[boom].status, c.responses[good].status) == (500, 200)
    c.close()
    # ResetStream: no answer; HTTP/1.1's connection closes.
    s = socket.create_connection(("127.0.0.1", gm.port()), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nx-reset: 1\r\n\r\n")
    assert s.recv(100) == b""
    s.close()
    entry = gm.access(5)[-1]
    assert entry["status"] == 0 and "reset the stream: asked to" in entry["details"]
    assert http_get(gm.port(), "/").status == 200


def test_body_filters_see_every_chunk_both_ways(upstream, start_mesh):
    gm = start_mesh(with_filters([upstream.address], [py("Upper")]))
    resp = http_get(gm.port(), "/echo", method="POST", body=b"hello body")
    meta = int(resp.getheader("x-echo-meta"))
    assert resp.body[meta + 1:] == b"HELLO BODY"  # up, and back again
    # Streamed in chunks (chunked encoding), 1 MiB: each chunk passes.
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=10)
    conn.request("POST", "/sink", body=iter([b"ab" * 4096] * 128), encode_chunked=True,
                 headers={"transfer-encoding": "chunked"})
    r = conn.getresponse()
    assert (r.status, r.read()) == (200, b"1048576\n")
    conn.close()


def test_fault_filter_aborts_delays_and_is_disabled_per_route(upstream, start_mesh):
    routes = [
        {"match": {"prefix": "/nofault"}, "route": {"cluster": "backend"},
         "typed_per_filter_config": {"envoy.filters.http.fault": {
             "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
             "disabled": True}}},
        {"match": {"prefix": "/abort"}, "route": {"cluster": "backend"},
         "typed_per_filter_config": {"envoy.filters.http.fault": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
             "abort": {"http_status": 503, "percentage": {"numerator": 100}}}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
    f = fault(delay={"header_delay": {}, "percentage": {"numerator": 100}},
              abort={"header_abort": {}, "percentage": {"numerator": 100}})
    gm = start_mesh(with_filters([upstream.address], [f], routes))
    assert http_get(gm.port(), "/abort").status == 503
    assert http_get(gm.port(), "/nofault", {"x-envoy-fault-abort-request": "500"}).status == 200
    assert http_get(gm.port(), "/x", {"x-envoy-fault-abort-request": "418"}).status == 418
    assert http_get(gm.port(), "/x").status == 200  # header-controlled: no header, no fault
    t0 = time.monotonic()
    assert http_get(gm.port(), "/x", {"x-envoy-fault-delay-request": "300"}).status == 200
    assert time.monotonic() - t0 >= 0.3
    flags = [e["flags"] for e in gm.access(5)]
    assert flags == ["FI", "-", "FI", "-", "DI"]
    assert gm.stat("http.ingress.fault.aborts_injected") == 2
    assert gm.stat("http.ingress.fault.delays_injected") == 1


def test_local_rate_limit_per_listener_and_per_route(upstream, start_mesh):
    routes = [{"match": {"prefix": "/own"}, "route": {"cluster": "backend"},
               "typed_per_filter_config": {"ratelimit": ratelimit(1, "own")}},
              {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    cfg = with_filters([upstream.address], [{"name": "ratelimit",
                                             "typed_config": ratelimit(3, "listener")}],
                       routes)
    gm = start_mesh(cfg)
    statuses = [http_get(gm.port(), "/").status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = http_get(gm.port(), "/")
    assert limited.getheader("x-envoy-ratelimited") == "true"
    assert limited.body == b"local_rate_limited"
    # The route's own bucket: one token, untouched by the listener's.
    assert [http_get(gm.port(), "/own").status for _ in range(2)] == [200, 429]
    assert gm.stat("listener.http_local_rate_limit.rate_limited") == 2
    assert gm.stat("listener.http_local_rate_limit.ok") == 3
    assert gm.stat("own.http_local_rate_limit.rate_limited") == 1
    assert gm.access(7)[-1]["flags"] == "RL"


def test_header_to_metadata_steers_routing_and_is_logged(upstream, start_mesh):
    h2m = {"name": "envoy.filters.http.header_to_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3"
                 ".Config",
        "request_rules": [{"header": "x-tenant", "remove": True, "on_header_present": {
            "metadata_namespace": "tenant", "key": "tier"}}]}}
    routes = [{"match": {"prefix": "/", "dynamic_metadata": [{
                  "filter": "tenant", "path": [{"key": "tier"}],
                  "value": {"string_match": {"exact": "gold"}}}]},
               "direct_response": {"status": 200, "body": {"inline_string": "gold lane\n"}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    gm = start_mesh(with_filters([upstream.address], [h2m], routes))
    assert http_get(gm.port(), "/", {"x-tenant": "gold"}).body == b"gold lane\n"
    resp = http_get(gm.port(), "/echo", {"x-tenant": "silver"})
    assert resp.status == 200 and b"x-tenant" not in resp.body  # removed before forwarding
    entries = gm.access(2)
    assert [e["metadata"] for e in entries] == [{"tenant": {"tier": "gold"}},
                                                {"tenant": {"tier": "silver"}}]


def bolt_cfg(endpoint: str, filters: list[dict], route: dict | None = None) -> dict:
    return mesh_config([endpoint], routes=[{
        "match": {"headers": [{"name": "service", "string_match": {"exact": SERVICE}}]},
        "route": {"cluster": "backend", "timeout": "3s"}, **(route or {})}],
        listener={"protocol": "bolt", "http_filters": filters},
        cluster={"protocol": "bolt"})


def test_the_same_filters_over_bolt(start_mesh):
    up = BoltServer()
    filters = [py("Phases", {"tag": "bolt"}), py("Boom"),
               {"name": "ratelimit", "typed_config": ratelimit(2)},
               fault(abort={"header_abort": {}, "percentage": {"numerator": 100}})]
    gm = start_mesh(bolt_cfg(up.address, filters))
    c = BoltClient(gm.port())
    c.send(request(1, b"hi"))
    (ok,) = c.receive(1)
    assert (ok["status"], ok["content"]) == (0, b"echo:hi")
    assert dict(up.headers[0])["x-from-filter"] == "bolt"  # a header map edited upstream
    assert ("x-phases", "before_route:True,after_route::backend,after_host:yes") in \
        parse_header_map(ok["raw_headers"])  # and the response's on the way back
    c.send(request(2, b"x", extra={"x-envoy-fault-abort-request": "504"}))
    assert c.receive(1)[0]["status"] == 7  # the abort's 504, as bolt says it: timeout
    c.send(request(3, b"x"))
    assert c.receive(1)[0]["status"] == 4  # the bucket (2 tokens) is empty: server busy
    c.send(request(4, b"x", extra={"x-boom": "1"}))
    assert c.receive(1)[0]["status"] == 2  # a raising filter: server exception
    c.close()
    assert gm.stat("http.ingress.filter.boom.errors") == 1
    gm.wait_log("filter_error")
    up.stop()


def test_config_errors_name_the_filter_and_its_key(upstream):
    def errors(filters=None, routes=None) -> list[str]:
        cfg = with_filters([upstream.address], filters or [], routes)
        with pytest.raises(ConfigError) as e:
            load_dict(cfg)
        return e.value.errors
    assert errors([{"name": "acme.nosuch"}]) == [
        "listeners[0].http_filters[0]: unknown filter type 'acme.nosuch' (known: "
        "envoy.extensions.filters.http.fault.v3.HTTPFault, "
        "envoy.extensions.filters.http.header_to_metadata.v3.Config, "
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, "
        "envoy.filters.http.fault, envoy.filters.http.header_to_metadata, "
        "envoy.filters.http.local_ratelimit, greenmesh.filters.python, or an installed "
        "entry point)"]
    assert errors([{"name": "envoy.filters.http.router"}, py("Deny")]) == [
        "listeners[0].http_filters[0]: the router must be the last filter"]
    bad = py("Deny")
    bad["typed_config"]["value"]["class"] = "tests.sample_filters:Nope"
    assert errors([bad]) == [
        "listeners[0].http_filters[0].typed_config.value.class: cannot import "
        "tests.sample_filters:Nope: AttributeError: module 'tests.sample_filters' has no "
        "attribute 'Nope'"]
    assert errors([py("AskService", {"port": "x"})]) == [
        "listeners[0].http_filters[0].typed_config.value.config: port: expected the "
        "service's port"]
    assert errors([fault(abort={"http_status": 700})]) == [
        "listeners[0].http_filters[0].typed_config.abort.http_status: expected an HTTP status "
        "from 200 to 599"]
    r = {"match": {"prefix": "/"}, "route": {"cluster": "backend"},
         "typed_per_filter_config": {"envoy.filters.http.header_to_metadata": {
             "config": {"request_rules": []}}}}
    assert errors(routes=[r]) == [
        "route_configs[0].virtual_hosts[0].routes[0].typed_per_filter_config"
        ".envoy.filters.http.header_to_metadata: filter type "
        "'envoy.filters.http.header_to_metadata' takes no per-route config (only disabled: "
        "true)"]
    ok = with_filters([upstream.address], [py("Deny"), {"name": "envoy.filters.http.router"}])
    assert [f.name for f in load_dict(ok).listeners[0].http_filters] == ["deny"]


def test_a_filter_from_an_installed_package_via_its_entry_point(tmp_path, upstream,
                                                                start_mesh):
    pkg = tmp_path / "src"
    (pkg / "acme_filters").mkdir(parents=True)
    (pkg / "acme_filters" / "__init__.py").write_text(
        "from greenmesh.filters import Filter\n\n"
        "class Stamp(Filter):\n"
        "    def response_headers(self, ctx, head):\n"
        "        head.set(b'x-stamp', self.config['value'].encode())\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "acme-filters"\nversion = "1.0"\n'
        '[project.entry-points."greenmesh.filters"]\n"acme.stamp" = "acme_filters:Stamp"\n')
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                    "--no-build-isolation", "--no-deps", "--target", str(target), str(pkg)],
                   check=True, cwd=tmp_path, timeout=120)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]))
    cfg = with_filters([upstream.address], [{"name": "acme.stamp",
                                             "config": {"value": "from-acme"}}])
    gm = start_mesh(cfg, env=env)
    assert http_get(gm.port(), "/").getheader("x-stamp") == "from-acme"


def test_filter_config_from_the_control_plane(start_mesh, upstream):
    from envoy_data_plane.envoy.config.listener.v3 import Filter as NetworkFilter
    from envoy_data_plane.envoy.config.listener.v3 import FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import FilterConfig
    from envoy_data_plane.envoy.extensions.filters.http.fault.v3 import FaultAbort, HttpFault
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpFilter,
    )
    from envoy_data_plane.envoy.type.v3 import FractionalPercent
    from envoy_data_plane.google.protobuf import Any, Struct

    from greenmesh.testing.controlplane import CDS, LDS, RDS, ControlPlane
    from greenmesh.xds.typed_struct import TypedStruct
    from tests.test_xds import addr, route_config, static_cluster, xds_mesh

    cp = ControlPlane()
    try:
        gm, _, _ = xds_mesh(start_mesh, cp.port)
        cp.set(CDS, [static_cluster("dyn", upstream.address)])
        cp.set(RDS, [route_config("r1", "dyn")])

        def lds(*filters: HttpFilter) -> Listener:
            hcm = HttpConnectionManager(stat_prefix="l1", rds=Rds(route_config_name="r1",
                                                                  config_source=ADS),
                                        http_filters=[*filters, HttpFilter(
                                            name="envoy.filters.http.router",
                                            typed_config=Any.pack(Router()))])
            return Listener(name="l1", address=addr(f"127.0.0.1:{port}"), filter_chains=[
                FilterChain(filters=[NetworkFilter(
                    name="envoy.filters.network.http_connection_manager",
                    typed_config=Any.pack(hcm))])])

        from tests.test_xds import ADS, Rds
        port = free_port()
        stamp = TypedStruct(type_url="greenmesh.filters.python", value=Struct.from_dict(
            {"class": "tests.sample_filters:Deny"}))
        abort = HttpFault(abort=FaultAbort(http_status=418, percentage=FractionalPercent(
            numerator=100)))
        cp.set(LDS, [lds(HttpFilter(name="deny", typed_config=Any.pack(stamp)),
                         HttpFilter(name="fault", typed_config=Any.pack(abort)))])
        assert until(lambda: _status(port, {"x-deny": "1"}) == 403)
        assert _status(port) == 418
        # RDS: a route turns the fault off (Envoy's FilterConfig in typed_per_filter_config).
        rc = route_config("r1", "dyn")
        rc.virtual_hosts[0].routes[0].typed_per_filter_config = {
            "fault": Any.pack(FilterConfig(disabled=True))}
        cp.set(RDS, [rc])
        assert until(lambda: _status(port) == 200)
        cp.set(RDS, [route_config("r1", "dyn")])
        assert until(lambda: _status(port) == 418)
        # A type greenmesh has no filter for: NACKed when required, skipped when optional.
        cors = Any(type_url="type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
                   value=b"")
        cp.set(LDS, [lds(HttpFilter(name="cors", typed_config=cors))])
        assert cp.wait_for(lambda: cp.nacks(LDS))
        assert "unknown filter type 'envoy.extensions.filters.http.cors.v3.Cors'" in \
            cp.nacks(LDS)[0].error_detail.message
        assert _status(port) == 418  # the old chain serves on
        cp.set(LDS, [lds(HttpFilter(name="cors", typed_config=cors, is_optional=True))])
        assert until(lambda: _status(port) == 200)
    finally:
        cp.stop()


def _status(port: int, headers: dict | None = None) -> int:
    try:
        return http_get(port, "/", headers).status
    except OSError:
        return 0


def test_readme_filter_example_runs(tmp_path, upstream, start_mesh, monkeypatch):
    """The README's "write a filter" section, as a user would copy it, and its config."""
    readme = (Path(ROOT) / "README.md").read_text()
    code = readme.split("<!-- filter-example -->")[1].split("```python")[1].split("```")[0]
    (tmp_path / "my_filters.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    example = yaml.safe_load(readme.split("### Filters")[1].split("```yaml")[1].split("```")[0])
    cfg = mesh_config([upstream.address])
    cfg["listeners"] = example["listeners"]
    assert [f.name for f in load_dict(cfg).listeners[0].http_filters] == [
        "envoy.filters.http.header_to_metadata", "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.fault", "tenant"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    cfg = with_filters([upstream.address], [{"name": "tenant", "typed_config": {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "greenmesh.filters.python",
        "value": {"class": "my_filters:RequireTenant", "config": {"header": "x-tenant"}}}}])
    gm = start_mesh(cfg, env=env)
    assert http_get(gm.port(), "/").status == 400
    resp = http_get(gm.port(), "/echo", {"x-tenant": "acme"})
    assert resp.status == 200 and b'"x-tenant-checked": "acme"' in resp.body


H2M = {"name": "envoy.filters.http.header_to_metadata", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
    "request_rules": [{"header": "x-tenant", "on_header_present": {
        "metadata_namespace": "tenant", "key": "tier"}}]}}
GOLD_ONLY = {"dynamic_metadata": [{"filter": "tenant", "path": [{"key": "tier"}],
                                   "value": {"string_match": {"exact": "gold"}}}]}


def test_the_shipped_filters_over_http2_and_grpc(upstream, start_mesh):
    import grpc
    routes = [{"match": {"prefix": "/gold", **GOLD_ONLY}, "route": {"cluster": "backend"}},
              {"match": {"prefix": "/gold"}, "direct_response": {"status": 403}},
              {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    filters = [H2M, {"name": "ratelimit", "typed_config": ratelimit(3)},
               fault(abort={"header_abort": {}, "percentage": {"numerator": 100}})]
    gm = start_mesh(with_filters([upstream.address], filters, routes,
                                 listener={"protocol": "http2"}))
    c = H2Client(gm.port())
    gold = c.request("GET", "/gold", headers=[("x-tenant", "gold")])
    silver = c.request("GET", "/gold", headers=[("x-tenant", "silver")])
    aborted = c.request("GET", "/", headers=[("x-envoy-fault-abort-request", "502")])
    c.pump(lambda: c.done(gold, silver, aborted))
    assert [c.responses[s].status for s in (gold, silver, aborted)] == [200, 403, 502]
    limited = c.request("GET", "/")  # the fourth: the bucket held three
    c.pump(lambda: c.done(limited))
    assert c.responses[limited].status == 429
    assert (b"x-envoy-ratelimited", b"true") in c.responses[limited].headers
    c.close()
    # A gRPC client is told as gRPC says errors: UNAVAILABLE with the filter's text.
    with grpc.insecure_channel(f"127.0.0.1:{gm.port()}") as channel:
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary("/pkg.Svc/Call")(b"x", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details() == "local_rate_limited"


def test_header_to_metadata_over_bolt(start_mesh):
    up = BoltServer()
    cfg = bolt_cfg(up.address, [H2M])
    only_gold = cfg["route_configs"][0]["virtual_hosts"][0]["routes"][0]["match"]
    only_gold.update(GOLD_ONLY)
    gm = start_mesh(cfg)
    c = BoltClient(gm.port())
    c.send(request(1, b"a", extra={"x-tenant": "gold"}) + request(2, b"b"))
    got = {f["id"]: f["status"] for f in c.receive(2)}
    assert got == {1: 0, 2: 6}  # no tenant: no route (no processor)
    c.close()
    assert [e["metadata"] for e in gm.access(2) if "metadata" in e] == [
        {"tenant": {"tier": "gold"}}]
    up.stop()
