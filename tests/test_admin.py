"""The admin endpoints at Envoy's paths: Prometheus's exposition checked with
prometheus-client's own parser against traffic sent, JSON forms, POST-only commands, and
readiness that waits for the control plane's first fetch."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenmesh.testing.controlplane import CDS, LDS, ControlPlane
from tests.harness import free_port, mesh_config, until
from tests.test_xds import static_cluster, xds_mesh

pytestmark = pytest.mark.source_only  # config, xDS, admin, workers, reload: see conftest.py


def call(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, as Prometheus's parser reads the page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_page_parses_and_counts_the_traffic_sent(upstream, start_mesh):
    cfg = mesh_config([upstream.address], routes=[
        {"match": {"prefix": "/missing"}, "direct_response": {"status": 404}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}])
    gm = start_mesh(cfg)
    for path in ("/", "/", "/status/503", "/missing"):
        call(gm.port(), path)
    gm.access(4)
    status, ctype, text = call(gm.admin_port, "/stats/prometheus")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    got = samples(text)
    ingress = ("envoy_http_conn_manager_prefix", "ingress")
    backend = ("envoy_cluster_name", "backend")

    def value(name: str, *labels: tuple[str, str]) -> float:
        key = tuple(sorted(labels))  # the parser reads counters as name_total
        return got.get((name, key), got.get((name + "_total", key)))
    assert value("envoy_http_downstream_rq_total", ingress) == 4
    assert value("envoy_http_downstream_rq_xx", ingress, ("envoy_response_code_class", "2")) == 2
    assert value("envoy_http_downstream_rq_xx", ingress, ("envoy_response_code_class", "4")) == 1
    assert value("envoy_http_downstream_rq_xx", ingress, ("envoy_response_code_class", "5")) == 1
    assert value("envoy_http_downstream_rq_http1_total", ingress) == 4
    assert value("envoy_cluster_upstream_rq_total", backend) == 3
    assert value("envoy_cluster_upstream_rq_xx", backend, ("envoy_response_code_class", "5")) == 1
    assert value("envoy_http_downstream_rq_time_count", ingress) == 4
    assert value("envoy_cluster_upstream_rq_time_count", backend) == 3
    assert value("envoy_cluster_upstream_rq_time_bucket", backend, ("le", "+Inf")) == 3
    assert value("envoy_cluster_upstream_cx_idle", backend) == 1  # a gauge, read when asked
    assert value("envoy_cluster_circuit_breakers_default_rq_open", backend) == 0
    assert value("envoy_listener_downstream_cx_total", ("envoy_listener_address", "ingress")) >= 4
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert kinds["envoy_http_downstream_rq_time"] == "histogram"
    assert kinds["envoy_cluster_upstream_cx_idle"] == "gauge"
    assert kinds["envoy_cluster_upstream_rq"] == "counter"  # the parser drops _total


def test_stats_as_json_and_filtered(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    call(gm.port(), "/")
    gm.access(1)
    status, ctype, body = call(gm.admin_port, "/stats?format=json&filter=^http\\.ingress\\.")
    assert status == 200 and ctype == "application/json"
    entries = json.loads(body)["stats"]
    values = {e["name"]: e["value"] for e in entries if "name" in e}
    assert values["http.ingress.downstream_rq_2xx"] == 1
    assert all(name.startswith("http.ingress.") for name in values)
    [hist] = [e["histograms"] for e in entries if "histograms" in e]
    assert [q["name"] for q in hist["computed_quantiles"]] == ["http.ingress.downstream_rq_time"]
    assert call(gm.admin_port, "/stats?filter=(")[0] == 400
    _, _, text = call(gm.admin_port, "/stats")
    assert "http.ingress.downstream_rq_time: P0(" in text


def test_clusters_json_shows_health_weight_priority_locality_and_counters(upstream, start_mesh):
    dead = f"127.0.0.1:{free_port()}"
    cfg = mesh_config([upstream.address])
    up_host, up_port = upstream.address.rsplit(":", 1)
    dead_port = int(dead.rsplit(":", 1)[1])
    cluster = cfg["clusters"][0]
    del cluster["endpoints"]
    cluster["load_assignment"] = {"cluster_name": "backend", "endpoints": [
        {"locality": {"region": "eu", "zone": "a"}, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {
                "address": up_host, "port_value": int(up_port)}}},
             "load_balancing_weight": 3}]},
        {"priority": 1, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": dead_port}}}}]}]}
    cluster["health_checks"] = [{"interval": "100ms", "unhealthy_threshold": 1,
                                 "tcp_health_check": {}}]
    gm = start_mesh(cfg)
    assert until(lambda: gm.host_value("backend", dead, "health_flags") == "/failed_active_hc")
    call(gm.port(), "/")
    gm.access(1)
    status, ctype, body = call(gm.admin_port, "/clusters?format=json")
    assert ctype == "application/json"
    [backend] = json.loads(body)["cluster_statuses"]
    assert backend["name"] == "backend" and backend["added_via_api"] is False
    hosts = {f"{h['address']['socket_address']['address']}:"
             f"{h['address']['socket_address']['port_value']}": h
             for h in backend["host_statuses"]}
    live, down = hosts[upstream.address], hosts[dead]
    assert (live["weight"], live["priority"], live["locality"]) == (3, 0, {"region": "eu",
                                                                          "zone": "a"})
    assert down["priority"] == 1 and down["health_status"]["failed_active_health_check"]
    assert not live["health_status"]["failed_active_health_check"]
    assert {s["name"]: s["value"] for s in live["stats"]}["rq_total"] == 1
    assert gm.host_value("backend", upstream.address, "locality") == "eu/a"


def test_server_info_help_and_what_is_not_allowed(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    status, ctype, body = call(gm.admin_port, "/server_info")
    info = json.loads(body)
    assert (info["state"], info["workers"]) == ("LIVE", 1) and info["version"]
    _, _, text = call(gm.admin_port, "/help")
    for path in ("/stats/prometheus", "/config_dump", "/quitquitquit", "/drain_listeners",
                 "/listeners"):
        assert path in text
    # Commands that change something are POST only; a GET does nothing.
    assert call(gm.admin_port, "/quitquitquit")[0] == 405
    assert call(gm.admin_port, "/healthcheck/fail")[0] == 405
    assert call(gm.admin_port, "/ready", "POST")[0] == 405
    assert call(gm.admin_port, "/nope")[0] == 404
    assert call(gm.admin_port, "/logging?level=loud", "POST")[0] == 400
    assert call(gm.admin_port, "/ready")[:3:2] == (200, "LIVE\n")


def test_healthcheck_fail_and_ok_turn_ready(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    assert call(gm.admin_port, "/healthcheck/fail", "POST")[0] == 200
    assert call(gm.admin_port, "/ready")[:3:2] == (503, "DRAINING\n")
    assert call(gm.port(), "/")[0] == 200  # traffic still flows: only the answer changes
    assert call(gm.admin_port, "/healthcheck/ok", "POST")[0] == 200
    assert call(gm.admin_port, "/ready")[:3:2] == (200, "LIVE\n")


def test_logging_level_moves_at_runtime(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    call(gm.port(), "/")
    gm.access(1)
    assert not [e for e in gm.logs() if e.get("event") == "connection_closed"]  # debug
    assert call(gm.admin_port, "/logging?level=debug", "POST")[0] == 200
    call(gm.port(), "/")
    assert gm.wait_log("connection_closed")
    assert call(gm.admin_port, "/logging?level=info", "POST")[0] == 200


def test_drain_listeners_stops_accepting_and_admin_stays(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    kept = socket.create_connection(("127.0.0.1", gm.port()), timeout=5)
    assert call(gm.admin_port, "/drain_listeners", "POST")[0] == 200

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", gm.port()), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False
    assert until(refused)
    assert kept.recv(10) == b""  # the idle connection was closed by the drain
    kept.close()
    assert call(gm.admin_port, "/ready")[:3:2] == (503, "DRAINING\n")


def test_quitquitquit_drains_and_exits(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]))
    assert call(gm.admin_port, "/quitquitquit", "POST")[0] == 200
    assert gm.proc.wait(10) == 0
    gm.stopped_by_test = True


@pytest.fixture
def quiet_cp():
    cp = ControlPlane(wait_for_set=True)  # answers nothing until told
    yield cp
    cp.stop()


def test_ready_waits_for_the_first_xds_fetch_and_config_dump_shows_what_came(
        quiet_cp, make_upstream, start_mesh):
    cp, up = quiet_cp, make_upstream("dyn")
    gm, _, admin = xds_mesh(start_mesh, cp.port, initial_fetch_timeout="30s")
    assert call(admin, "/ready")[:3:2] == (503, "PRE_INITIALIZING\n")
    cp.set(CDS, [static_cluster("dyn", up.address)])
    cp.set(LDS, [])
    assert until(lambda: call(admin, "/ready")[0] == 200)
    assert gm.wait_log("xds_initialized")
    dump = json.loads(call(admin, "/config_dump")[2])["configs"]
    clusters = next(c for c in dump if c["@type"].endswith("ClustersConfigDump"))
    [dyn] = clusters["dynamic_active_clusters"]
    assert dyn["cluster"]["name"] == "dyn" and dyn["version_info"] == clusters["version_info"]
    assert dyn["last_updated"].endswith("Z")
    assert json.loads(call(admin, "/clusters?format=json")[2])["cluster_statuses"][0][
        "added_via_api"] is True
    stats = gm.stats()
    assert stats["xds.cds.update_success"] == 1 and stats["control_plane.initialized"] == 1
    assert stats["xds.cds.version"] == int(dyn["version_info"])


def test_ready_stops_waiting_at_the_initial_fetch_timeout(start_mesh):
    gm, _, admin = xds_mesh(start_mesh, free_port(), initial_fetch_timeout="0.5s")  # nobody
    [warning] = gm.wait_log("xds_initial_fetch_timeout")
    assert warning["level"] == "warning" and warning["waiting_for"] == ["cds", "lds"]
    assert call(admin, "/ready")[:3:2] == (200, "LIVE\n")


def test_status_summarises_a_running_mesh(upstream, start_mesh):
    import subprocess
    import sys

    from tests.harness import ROOT
    gm = start_mesh(mesh_config([upstream.address]))
    for _ in range(3):
        call(gm.port(), "/")
    gm.access(3)
    out = subprocess.run([sys.executable, "-m", "greenmesh.cli", "status", "--admin",
                          f"127.0.0.1:{gm.admin_port}", "--interval", "0.2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("greenmesh ") and "  LIVE  " in out.stdout.splitlines()[0]
    assert f"ingress          127.0.0.1:{gm.port()}" in out.stdout
    assert "3 requests (2xx 3)" in out.stdout
    assert "backend          1/1 healthy" in out.stdout
    gone = subprocess.run([sys.executable, "-m", "greenmesh.cli", "status", "--admin",
                           f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert gone.returncode == 1 and "cannot read the admin" in gone.stderr


def test_health_changes_and_ejections_are_logged_with_why(upstream, start_mesh):
    dead = f"127.0.0.1:{free_port()}"
    gm = start_mesh(mesh_config([dead], cluster={
        "health_checks": [{"interval": "100ms", "unhealthy_threshold": 2,
                           "tcp_health_check": {}}]}))
    [down] = gm.wait_log("host_unhealthy")
    assert (down["host"], down["reason"]) == (dead, "2 health checks failed in a row")
    assert gm.stats()["cluster.backend.health_check.failure"] >= 2
    ejecting = start_mesh(mesh_config([upstream.address], cluster={
        "outlier_detection": {"consecutive_5xx": 2, "base_ejection_time": "0.3s",
                              "max_ejection_percent": 100}}))
    for _ in range(2):
        assert call(ejecting.port(), "/status/500")[0] == 500
    [ejected] = ejecting.wait_log("host_ejected")
    assert (ejected["host"], ejected["reason"]) == (upstream.address, "2 consecutive 5xx")
    [back] = ejecting.wait_log("host_returned")
    assert back["reason"] == "ejection time over"
