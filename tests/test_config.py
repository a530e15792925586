"""The config loader and ``greenmesh --validate``: every error names its key path."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from greenmesh import model
from greenmesh.config import ConfigError, load_text
from tests.harness import ROOT, free_port

pytestmark = pytest.mark.source_only  # config, xDS, admin, workers, reload: see conftest.py

GOOD = """
admin: {address: 127.0.0.1:15000}
listeners:
  - {name: ingress, address: 127.0.0.1:15001, protocol: http1, route_config: default}
route_configs:
  - name: default
    virtual_hosts:
      - name: backend
        domains: ["*"]
        routes:
          - match: {prefix: "/"}
            route: {cluster: backend, timeout: 15s}
clusters:
  - name: backend
    protocol: http1
    lb_policy: round_robin
    connect_timeout: 250ms
    endpoints:
      - {address: 127.0.0.1:8080, weight: 2}
      - "[::1]:8081"
"""


def validate(tmp_path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, "-m", "greenmesh.cli", "--validate", "--config",
                           str(path)], capture_output=True, text=True, cwd=ROOT, timeout=30)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(textwrap.dedent(text))
    return e.value.errors


def test_good_config_builds_the_model():
    cfg = load_text(GOOD)
    (cluster,) = cfg.clusters
    assert cluster.connect_timeout == 0.25
    assert cluster.endpoints == (model.Endpoint(model.Address("127.0.0.1", 8080), 2),
                                 model.Endpoint(model.Address("::1", 8081), 1))
    route = cfg.route_configs[0].virtual_hosts[0].routes[0]
    assert route.match.prefix == "/" and route.route == model.RouteAction("backend", 15.0)
    assert cfg.listeners[0].address == model.Address("127.0.0.1", 15001)
    assert cfg.admin == model.Admin(model.Address("127.0.0.1", 15000))


def test_validate_ok_for_good_and_shipped_configs(tmp_path):
    r = validate(tmp_path, GOOD)
    assert (r.returncode, r.stdout) == (0, "ok\n")
    r = subprocess.run([sys.executable, "-m", "greenmesh.cli", "--validate"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    examples = sorted((ROOT / "etc" / "examples").glob("*.yaml"))
    assert examples
    for path in [ROOT / "etc" / "mesh-xds.yaml", *examples]:
        r = subprocess.run([sys.executable, "-m", "greenmesh.cli", "--validate", "--config",
                            str(path)], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (0, "ok\n"), (path, r.stderr)


def test_validate_reports_every_error_with_its_path(tmp_path):
    r = validate(tmp_path, GOOD.replace("- {address: 127.0.0.1:8080, weight: 2}",
                                        "- {address: localhost, weight: 0}")
                 .replace("timeout: 15s", "timeout: soon")
                 .replace("protocol: http1, route", "protocol: gopher, route"))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "listeners[0].protocol: expected one of bolt, http1, http2, auto",
        "route_configs[0].virtual_hosts[0].routes[0].route.timeout: "
        "expected a duration such as 15s or 250ms",
        "clusters[0].endpoints[0].address: expected host:port",
        "clusters[0].endpoints[0].weight: expected a positive integer",
    ]


def test_second_cluster_endpoint_path(tmp_path):
    text = GOOD + """
  - name: other
    endpoints: [{address: "127.0.0.1:notaport"}]
"""
    assert errors(text) == ["clusters[1].endpoints[0].address: expected host:port"]


def test_validate_refuses_clashing_addresses_bad_ports_and_nothing_to_serve(tmp_path):
    both = GOOD.replace("listeners:\n", "listeners:\n  - {name: twin, address: "
                        "0.0.0.0:18080, route_config: default}\n", 1)
    twin = load_text(GOOD).listeners[0]
    clash = GOOD.replace("listeners:\n", "listeners:\n  - {name: twin, address: "
                         f"'0.0.0.0:{twin.address.port}', route_config: default}}\n", 1)
    assert load_text(both).listeners[0].name == "twin"  # another port: fine
    assert errors(clash) == [f"listeners[1].address: 127.0.0.1:{twin.address.port} is also "
                             "the address of listeners[0] ('twin')"]
    assert errors(GOOD.replace(f"127.0.0.1:{twin.address.port}", "127.0.0.1:99999")) == [
        "listeners[0].address: expected a port between 1 and 65535"]
    assert errors(GOOD.replace("127.0.0.1:8080", "127.0.0.1:70000")) == [
        "clusters[0].endpoints[0].address: expected a port between 1 and 65535"]
    r = validate(tmp_path, "")
    assert r.returncode == 1 and r.stderr == (
        f"{tmp_path / 'c.yaml'}: nothing to serve: give listeners, an xds control plane, or "
        "route_configs (for the in-process client)\n")

def test_unknown_keys_and_missing_keys():
    errs = errors("""
    listeners:
      - {name: a, adress: 127.0.0.1:1, route_config: r}
    route_configs:
      - name: r
        virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: x}, route: {}}]}]
    bogus: 1
    """)
    assert "bogus: unknown key (expected one of admin, listeners, route_configs, clusters, " \
           "drain_timeout, xds, overload_manager, workers)" in errs
    assert any(e.startswith("listeners[0].adress: unknown key") for e in errs)
    assert "listeners[0].address: required" in errs
    assert "route_configs[0].virtual_hosts[0].routes[0].match.prefix: " \
           "expected a path starting with /" in errs
    assert "route_configs[0].virtual_hosts[0].routes[0].route: expected exactly one of cluster, " \
           "weighted_clusters, cluster_header" in errs


def test_cross_references_and_duplicates():
    errs = errors("""
    listeners:
      - {name: a, address: 127.0.0.1:1, route_config: nope}
      - {name: a, address: 127.0.0.1:2, route_config: r}
    route_configs:
      - name: r
        virtual_hosts:
          - {name: v, domains: ["*", "x.com"], routes: [{match: {path: /a}, route: {cluster: c}}]}
          - {name: w, domains: ["X.com"], routes: [{match: {prefix: /}, route: {cluster: gone}}]}
    clusters:
      - {name: c, endpoints: ["127.0.0.1:9"]}
    """)
    assert errs == [
        "route_configs[0].virtual_hosts[1].domains[0]: domain 'x.com' already used by "
        "virtual host 'v'",
        "listeners[1].name: duplicate listener name 'a'",
        "listeners[0].route_config: unknown route config 'nope'",
        "route_configs[0].virtual_hosts[1].routes[0].route.cluster: unknown cluster 'gone'",
    ]


def test_bad_yaml_and_bad_shapes():
    assert errors("listeners: [\n  {name: a,\n")[0].startswith("config:3:1: invalid YAML")
    assert errors("- just\n- a list\n") == ["config: expected a mapping at the top level"]
    assert errors("clusters: {name: c}") == ["clusters: expected a list"]
    assert errors("admin: {address: 1.2.3.4:99999}") == [
        "admin.address: expected a port between 1 and 65535"]


def test_missing_file_and_bad_config_at_start(tmp_path):
    r = subprocess.run([sys.executable, "-m", "greenmesh.cli", "--config", "/nonexistent.yaml"],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 1 and r.stderr == "/nonexistent.yaml: No such file or directory\n"
    path = tmp_path / "c.yaml"
    path.write_text("clusters: [{name: c, endpoints: [nothing]}]")
    r = subprocess.run([sys.executable, "-m", "greenmesh.cli", "--config", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 1
    assert r.stderr == "clusters[0].endpoints[0].address: expected host:port\n"


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(GOOD.replace("127.0.0.1:15001", f"127.0.0.1:{port}")
                        .replace("127.0.0.1:15000", f"127.0.0.1:{free_port()}"))
        r = subprocess.run([sys.executable, "-m", "greenmesh.cli", "--config", str(path)],
                           capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 1
    assert "cannot start" in r.stderr and "Address already in use" in r.stderr


def test_version():
    r = subprocess.run([sys.executable, "-m", "greenmesh.cli", "--version"], capture_output=True,
                       text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("greenmesh 0.")
