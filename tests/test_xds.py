"""xDS against a real grpcio ADS server (greenmesh.testing.controlplane) and the greenmesh process."""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import threading

import pytest
from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterEdsClusterConfig,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ConfigSource,
    SocketAddress,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    RouteMatchGrpcRouteMatchOptions,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    Rds,
)
from envoy_data_plane.google.protobuf import Any

from greenmesh.testing.controlplane import CDS, EDS, LDS, RDS, ControlPlane
from tests.harness import Upstream, free_port, http_text, until

ADS = ConfigSource(ads=AggregatedConfigSource())


def addr(hostport: str) -> Address:
    host, port = hostport.rsplit(":", 1)
    return Address(socket_address=SocketAddress(address=host, port_value=int(port)))


def endpoints(*hostports: str) -> list[LocalityLbEndpoints]:
    return [LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=addr(h)))
                                              for h in hostports])]


def static_cluster(name: str, *hostports: str) -> Cluster:
    return Cluster(name=name, type=ClusterDiscoveryType.STATIC,
                   connect_timeout=datetime.timedelta(seconds=1),
                   load_assignment=ClusterLoadAssignment(cluster_name=name,
                                                         endpoints=endpoints(*hostports)))


def eds_cluster(name: str) -> Cluster:
    return Cluster(name=name, type=ClusterDiscoveryType.EDS,
                   eds_cluster_config=ClusterEdsClusterConfig(eds_config=ADS),
                   connect_timeout=datetime.timedelta(seconds=1))


def cla(name: str, *hostports: str) -> ClusterLoadAssignment:
    return ClusterLoadAssignment(cluster_name=name, endpoints=endpoints(*hostports))


def route_config(name: str, cluster: str, prefix: str = "/") -> RouteConfiguration:
    return RouteConfiguration(name=name, virtual_hosts=[VirtualHost(
        name="all", domains=["*"], routes=[Route(match=RouteMatch(prefix=prefix),
                                                 route=RouteAction(cluster=cluster))])])


def listener(name: str, port: int, route_name: str) -> Listener:
    hcm = HttpConnectionManager(stat_prefix=name, rds=Rds(route_config_name=route_name,
                                                          config_source=ADS))
    return Listener(name=name, address=addr(f"127.0.0.1:{port}"), filter_chains=[FilterChain(
        filters=[Filter(name="envoy.filters.network.http_connection_manager",
                        typed_config=Any.pack(hcm))])])


@pytest.fixture
def cp():
    plane = ControlPlane()
    yield plane
    plane.stop()


def xds_mesh(start_mesh, cp_port: int, cluster: str = "dyn",
             initial_fetch_timeout: str = "1s") -> tuple:
    port, admin = free_port(), free_port()
    gm = start_mesh({
        "admin": {"address": f"127.0.0.1:{admin}"},
        "xds": {"server": f"127.0.0.1:{cp_port}", "node": {"id": "test-node"},
                "initial_fetch_timeout": initial_fetch_timeout},
        "listeners": [{"name": "ingress", "address": f"127.0.0.1:{port}",
                       "route_config": "default"}],
        "route_configs": [{"name": "default", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}],
    })
    return gm, port, admin


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.getheader("x-upstream") or body.decode()


@pytest.fixture
def ups():
    started = [Upstream(f"up{i}") for i in (1, 2)]
    yield started
    for u in started:
        u.stop()


def test_cluster_from_cds_takes_traffic(cp, start_mesh, ups):
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    assert get(port)[0] == 503  # the route's cluster does not exist yet
    cp.set(CDS, [static_cluster("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    assert cp.wait_for(lambda: any(r.version_info == "1" for r in cp.acks(CDS)))
    assert all(r.node.id == "test-node" for r in cp.requests if r.node)


def test_eds_change_moves_traffic_and_in_flight_requests_finish(cp, start_mesh, ups):
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [eds_cluster("dyn")])
    assert cp.wait_for(lambda: any(list(r.resource_names) == ["dyn"] for r in cp.requests
                                   if r.type_url == EDS))
    cp.set(EDS, [cla("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    slow: dict = {}
    t = threading.Thread(target=lambda: slow.setdefault("r", get(port, "/delay/0.5")))
    t.start()
    assert until(lambda: gm.host_stat("dyn", ups[0].address, "rq_active") == 1)  # on its way
    cp.set(EDS, [cla("dyn", ups[1].address)])
    # (How fast is bench/xds.py's to measure: push -> applied.)
    assert until(lambda: get(port) == (200, "up2"), timeout=5, step=0.001)
    t.join(5)
    assert slow["r"] == (200, "up1")  # the old host's request in flight finished


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_invalid_resource_is_nacked_and_old_config_keeps_serving(cp, start_mesh, ups):
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [static_cluster("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    bad = static_cluster("dyn", ups[1].address)
    bad.type = ClusterDiscoveryType.ORIGINAL_DST
    cp.set(CDS, [bad])
    assert cp.wait_for(lambda: cp.nacks(CDS))
    nack = cp.nacks(CDS)[0]
    assert nack.version_info == "1"  # the last accepted version
    assert nack.error_detail.message == "cluster 'dyn'.type: ORIGINAL_DST is not supported"
    assert get(port) == (200, "up1")
    # A route condition greenmesh cannot evaluate is refused too, naming the field.
    cp.set(LDS, [listener("l2", free_port(), "r2")])
    rc = route_config("r2", "dyn")
    rc.virtual_hosts[0].routes[0].match = RouteMatch(prefix="/",
                                                     grpc=RouteMatchGrpcRouteMatchOptions())
    cp.set(RDS, [rc])
    assert cp.wait_for(lambda: cp.nacks(RDS))
    assert cp.nacks(RDS)[0].error_detail.message == \
        "route_configuration 'r2'.virtual_hosts[0].routes[0].match.grpc: not supported"


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_control_plane_lost_and_back(cp, start_mesh, ups):
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [static_cluster("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    cp.stop()
    gm.wait_log("xds_reconnecting")  # greenmesh saw it go
    assert get(port) == (200, "up1")  # the last good config keeps serving
    again = ControlPlane(cp.port)
    try:
        assert again.wait_for(lambda: any(r.type_url == CDS and r.version_info == "1"
                                          for r in again.requests), timeout=15)
        again.set(CDS, [static_cluster("dyn", ups[1].address)])
        assert until(lambda: get(port) == (200, "up2"))
    finally:
        again.stop()


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_after_reconnects_each_type_is_subscribed_once_per_stream(cp, start_mesh, ups):
    """Subscriptions of attempts that failed while the control plane was away are not
    replayed on the stream that finally connects: one request per type, then only ACKs."""
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [static_cluster("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    cp.stop()
    assert until(lambda: len([e for e in gm.logs() if e.get("event") == "xds_reconnecting"]) >= 4,
                 timeout=20)
    again = ControlPlane(cp.port)
    try:
        assert again.wait_for(lambda: again.acks(CDS) and again.acks(LDS), timeout=40)
        for type_url in (CDS, LDS):
            subscriptions = [r for r in again.requests
                             if r.type_url == type_url and not r.response_nonce]
            assert len(subscriptions) == 1, (type_url, subscriptions)
            assert subscriptions[0].version_info == ("1" if type_url == CDS else "0")
    finally:
        again.stop()


def push_listener(cp: ControlPlane, ups, name: str, routes: str) -> int:
    """The cluster ``dyn`` and an LDS listener on a fresh port whose routes come by RDS as
    ``routes`` (not sent yet); returns once greenmesh has asked for them."""
    cp.set(CDS, [static_cluster("dyn", ups[0].address)])
    port = free_port()
    cp.set(LDS, [listener(name, port, routes)])
    assert cp.wait_for(lambda: any(list(r.resource_names) == [routes] for r in cp.requests
                                   if r.type_url == RDS))
    return port


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_listener_and_route_added_and_changed_live(cp, start_mesh, ups):
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    new_port = push_listener(cp, ups, "dynamic-in", "r1")
    cp.set(RDS, [route_config("r1", "dyn")])
    assert until(lambda: _safe_get(new_port) == (200, "up1"))
    cp.set(RDS, [route_config("r1", "dyn", prefix="/api")])
    assert until(lambda: _safe_get(new_port)[0] == 404)
    assert get(port) == (200, "up1")  # the static listener was never disturbed
    cp.set(LDS, [])
    assert until(lambda: _safe_get(new_port)[0] == 0)  # removed: nothing listens any more


def _safe_get(port: int) -> tuple[int, str]:
    try:
        return get(port)
    except OSError:
        return 0, ""


LOAD = """
import http.client, json, sys, threading
port = int(sys.argv[1])
statuses = []
stop = threading.Event()
def run():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        except OSError as e:
            statuses.append(str(e))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads: t.start()
while not statuses: stop.wait(0.01)
print("started", flush=True)
sys.stdin.read()  # until the test closes it
stop.set()
for t in threads: t.join()
print(json.dumps(statuses))
"""


def test_traffic_during_50_updates_loses_nothing(cp, start_mesh, ups):
    import json
    import subprocess
    import sys
    gm, port, admin = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [eds_cluster("dyn")])
    cp.set(EDS, [cla("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert load.stdout is not None and load.stdout.readline() == "started\n"
    sets = [(ups[0].address,), (ups[1].address,), (ups[0].address, ups[1].address)]
    for i in range(50):  # endpoints moving, and another cluster coming and going, each applied
        eds = cp.set(EDS, [cla("dyn", *sets[i % 3])])
        extra = [static_cluster("other", ups[1].address)] if i % 2 else []
        cds = cp.set(CDS, [eds_cluster("dyn"), *extra])
        assert cp.wait_for(lambda e=eds, c=cds: cp.ack_time(EDS, e) and cp.ack_time(CDS, c))
    statuses = json.loads(load.communicate("", timeout=30)[0])
    failed = [s for s in statuses if s != 200]
    assert statuses and not failed, f"{len(failed)} of {len(statuses)} failed: {failed[:5]}"
    assert not cp.nacks(EDS) and not cp.nacks(CDS)
    # A cluster removed from CDS takes no new requests: its route answers 503.
    cp.set(CDS, [])
    assert until(lambda: get(port)[0] == 503)


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_control_plane_serves_a_directory_and_pushes_edits(start_mesh, ups, tmp_path):
    import subprocess
    import sys

    from tests.harness import ROOT, wait_port
    cp_port, in_port = free_port(), free_port()
    (tmp_path / "clusters.yaml").write_text(
        "- {name: backend, type: EDS, eds_cluster_config: {eds_config: {ads: {}}}}\n")
    endpoints = tmp_path / "endpoints.yaml"
    endpoint = ("- cluster_name: backend\n  endpoints: [{lb_endpoints: [{endpoint: {address: "
                "{socket_address: {address: 127.0.0.1, port_value: %d}}}}]}]\n")
    endpoints.write_text(endpoint % ups[0].port)
    hcm = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
           "HttpConnectionManager")
    routes = "[{match: {prefix: /}, route: {cluster: backend}}]"
    (tmp_path / "listeners.yaml").write_text(f"""
- name: from-file
  address: {{socket_address: {{address: 127.0.0.1, port_value: {in_port}}}}}
  filter_chains:
    - filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": {hcm}
            stat_prefix: f
            route_config:
              name: inline
              virtual_hosts: [{{name: all, domains: ["*"], routes: {routes}}}]
""")
    plane = subprocess.Popen([sys.executable, "-m", "greenmesh.testing.controlplane", "--port",
                              str(cp_port), "--dir", str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(cp_port, plane)
        start_mesh({"xds": {"server": f"127.0.0.1:{cp_port}", "node": {"id": "n"}}})
        assert until(lambda: _safe_get(in_port) == (200, "up1"))
        endpoints.write_text(endpoint % ups[1].port)
        assert until(lambda: _safe_get(in_port) == (200, "up2"))
    finally:
        plane.terminate()
        plane.wait()


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_rds_route_actions_convert(cp, start_mesh, ups):
    from envoy_data_plane.envoy.config.core.v3 import DataSource, HeaderValue, HeaderValueOption
    from envoy_data_plane.envoy.config.route.v3 import (
        DirectResponseAction,
        RedirectAction,
        WeightedCluster,
        WeightedClusterClusterWeight,
    )
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [static_cluster("dyn", ups[0].address)])
    new_port = free_port()
    cp.set(LDS, [listener("routes-in", new_port, "r3")])
    rc = RouteConfiguration(name="r3", virtual_hosts=[VirtualHost(name="all", domains=["*"], routes=[
        Route(match=RouteMatch(path="/health"), direct_response=DirectResponseAction(
            status=204, body=DataSource(inline_string=""))),
        Route(match=RouteMatch(prefix="/old"), redirect=RedirectAction(path_redirect="/new")),
        Route(match=RouteMatch(prefix="/"), route=RouteAction(weighted_clusters=WeightedCluster(
            clusters=[WeightedClusterClusterWeight(name="dyn", weight=1)])),
            request_headers_to_add=[HeaderValueOption(
                header=HeaderValue(key="x-from", value="rds"))])])])
    cp.set(RDS, [rc])
    assert until(lambda: _safe_get(new_port) == (200, "up1"))
    assert get(new_port, "/health")[0] == 204
    assert get(new_port, "/old")[0] == 301
    conn = http.client.HTTPConnection("127.0.0.1", new_port, timeout=5)
    conn.request("GET", "/echo")
    assert b'"x-from": "rds"' in conn.getresponse().read()
    assert not cp.nacks(RDS)


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_cluster_resilience_fields_convert():
    from envoy_data_plane.envoy.config.cluster.v3 import (
        CircuitBreakers,
        CircuitBreakersThresholds,
        ClusterLbPolicy,
        OutlierDetection,
    )
    from envoy_data_plane.envoy.config.core.v3 import HealthCheck, HealthCheckHttpHealthCheck
    from envoy_data_plane.envoy.type.v3 import Int64Range

    from greenmesh import model
    from greenmesh.config.clusters import cluster
    from tests.harness import convert_resource
    c = static_cluster("svc", "127.0.0.1:1")
    c.lb_policy = ClusterLbPolicy.MAGLEV
    c.health_checks = [HealthCheck(
        timeout=datetime.timedelta(milliseconds=500), interval=datetime.timedelta(seconds=2),
        unhealthy_threshold=3, healthy_threshold=2,
        http_health_check=HealthCheckHttpHealthCheck(
            path="/healthz", expected_statuses=[Int64Range(start=200, end=300)]))]
    c.outlier_detection = OutlierDetection(consecutive_5xx=3,
                                           base_ejection_time=datetime.timedelta(seconds=10),
                                           max_ejection_percent=50)
    c.circuit_breakers = CircuitBreakers(thresholds=[CircuitBreakersThresholds(
        max_requests=100, max_retries=1, max_connections=10)])
    m, warnings = convert_resource(cluster, c)
    assert warnings == []  # every field set was converted
    assert m.lb_policy == "maglev"
    assert m.health_check == model.HealthCheck("/healthz", ((200, 300),), 2.0, 0.5, 2, 3)
    assert m.outlier_detection == model.OutlierDetection(
        consecutive_5xx=3, base_ejection_time=10.0, max_ejection_percent=50)
    cb = m.circuit_breakers
    assert (cb.max_requests, cb.max_retries, cb.max_connections) == (100, 1, 10)


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_undecodable_resource_is_the_control_planes_error(cp, start_mesh, ups):
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [static_cluster("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    cp.set_packed(CDS, {"junk": Any(type_url=CDS, value=b"\x0a\xff\xff")})
    assert cp.wait_for(lambda: cp.nacks(CDS))
    assert cp.nacks(CDS)[0].error_detail.message.startswith(
        "cluster [0]: does not decode as type.googleapis.com/envoy.config.cluster.v3.Cluster: ")
    assert get(port) == (200, "up1")
    gm.wait_log("xds_nack")
    assert "xds_internal_error" not in [e["event"] for e in gm.logs()]


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_undecodable_endpoints_are_the_control_planes_error_too(cp, start_mesh, ups):
    """Found by fuzzing: the EDS fast path raised on bytes that do not decode, so a broken
    ClusterLoadAssignment was NACKed as greenmesh's internal error."""
    gm, port, _ = xds_mesh(start_mesh, cp.port)
    cp.set(CDS, [eds_cluster("dyn")])
    cp.set(EDS, [cla("dyn", ups[0].address)])
    assert until(lambda: get(port) == (200, "up1"))
    cp.set_packed(EDS, {"dyn": Any(type_url=EDS, value=b"-\\\x05XF9\r\n\r\n\r\n-\xab")})
    assert cp.wait_for(lambda: cp.nacks(EDS))
    assert "does not decode as type.googleapis.com/envoy.config.endpoint.v3." \
        "ClusterLoadAssignment" in cp.nacks(EDS)[0].error_detail.message
    assert get(port) == (200, "up1")
    assert "xds_internal_error" not in [e["event"] for e in gm.logs()]


INTERNAL_BUG = """
import sys
from gevent import monkey
monkey.patch_all()
from greenmesh.config import load_dict
from greenmesh.log import configure
from greenmesh.mesh import Mesh
from greenmesh.xds.resources import CDS

configure("info", "json")
cp_port, admin_port = int(sys.argv[1]), int(sys.argv[2])
mesh = Mesh(load_dict({"admin": {"address": f"127.0.0.1:{admin_port}"},
                       "xds": {"server": f"127.0.0.1:{cp_port}", "node": {"id": "n"}}}))
mesh.start()

def buggy(resources):
    raise ZeroDivisionError("a bug in a handler")

mesh.xds.register(CDS, buggy, wildcard=True)  # before the xDS greenlet first runs
mesh.wait()
"""


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_a_greenmesh_bug_is_logged_and_counted_not_blamed_on_the_resources(cp, tmp_path):
    import json
    import subprocess
    import sys

    from tests.harness import ROOT, wait_port
    admin = free_port()
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", INTERNAL_BUG, str(cp.port), str(admin)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(admin, proc)
        cp.set(CDS, [static_cluster("dyn", "127.0.0.1:1")])
        assert cp.wait_for(lambda: cp.nacks(CDS))
        assert cp.nacks(CDS)[0].error_detail.message == (
            "greenmesh internal error applying these resources (ZeroDivisionError); not a "
            "problem of the resources: see greenmesh's log")
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        conn.request("GET", "/stats")
        assert "xds.internal_errors: 1" in conn.getresponse().read().decode()
        def bugs() -> list[dict]:
            entries = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
            return [e for e in entries if e["event"] == "xds_internal_error"]
        assert until(bugs)
        (bug,) = bugs()
        assert bug["level"] == "error" and "ZeroDivisionError" in bug["exception"]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_bolt_over_cds(cp, start_mesh):
    from envoy_data_plane.envoy.config.core.v3 import Metadata
    from envoy_data_plane.google.protobuf import Struct

    from tests.boltpeer import BoltClient, BoltServer, request
    from tests.test_bolt import bolt_config
    up = BoltServer()
    cfg = bolt_config("127.0.0.1:1")
    cfg["clusters"] = []
    cfg["xds"] = {"server": f"127.0.0.1:{cp.port}", "node": {"id": "n"}}
    cfg["route_configs"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "rpc"
    gm = start_mesh(cfg)
    c = static_cluster("rpc", up.address)
    c.metadata = Metadata(filter_metadata={"greenmesh": Struct.from_dict({"protocol": "bolt"})})
    cp.set(CDS, [c])
    assert cp.wait_for(lambda: cp.acks(CDS) and cp.acks(CDS)[-1].version_info == "1")
    client = BoltClient(gm.port())
    client.send(request(7, b"over xds"))
    (answer,) = client.receive(1)
    assert (answer["status"], answer["content"]) == (0, b"echo:over xds")
    client.close()
    up.stop()


@pytest.mark.source_only  # the control plane's side: see conftest.py
def test_a_pushed_listener_accepts_only_once_its_routes_are_warm(cp, start_mesh, ups):
    """Envoy's listener warming: an LDS listener whose RDS routes have not come does not
    listen yet (it would answer 404 to everything); it starts when they come."""
    gm, _, admin = xds_mesh(start_mesh, cp.port)
    port = push_listener(cp, ups, "l2", "r2")
    assert cp.wait_for(lambda: cp.acks(LDS))

    def accepting() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return False
        return True
    assert not accepting()
    dump = json.loads(http_text(admin, "/config_dump"))["configs"]
    listeners = next(c for c in dump if c["@type"].endswith("ListenersConfigDump"))
    assert [d["name"] for d in listeners["dynamic_listeners"] if "warming_state" in d] == ["l2"]
    cp.set(RDS, [route_config("r2", "dyn")])
    assert until(accepting)
    assert get(port) == (200, "up1")


