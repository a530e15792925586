"""The YAML file and a control plane's resources go through the same converter: the same
defaults, the same checks, the same model, and greenmesh's short spellings mean what Envoy's
long ones do."""

from __future__ import annotations

import datetime
import textwrap

import pytest
from envoy_data_plane.envoy.config.cluster.v3 import OutlierDetection
from envoy_data_plane.envoy.config.core.v3 import Metadata
from envoy_data_plane.envoy.config.route.v3 import RouteAction
from envoy_data_plane.google.protobuf import Struct

from greenmesh import model
from greenmesh.config import ConfigError, load_dict, load_text
from greenmesh.config.clusters import cluster
from greenmesh.config.reader import Reader
from greenmesh.config.routes import route_config
from greenmesh.streams import default_registry
from greenmesh.xds.resources import json_form
from tests.harness import convert_resource
from tests.test_xds import route_config as xds_route_config
from tests.test_xds import static_cluster

pytestmark = pytest.mark.source_only  # config, xDS, admin, workers, reload: see conftest.py


def yaml_cluster(**fields) -> model.Cluster:
    cfg = load_dict({"clusters": [{"name": "c", "endpoints": ["127.0.0.1:1"], **fields}]})
    return cfg.clusters[0]


def xds_errors(build, message) -> list[str]:
    r = Reader(default_registry().names(), strict=False)
    build(r, json_form(message), "resource")
    return r.errors


def test_defaults_are_the_same_from_yaml_and_cds():
    from_yaml = yaml_cluster()
    from_cds, _ = convert_resource(cluster, static_cluster("c", "127.0.0.1:1"))
    assert from_yaml.connect_timeout == 5.0  # Envoy's default, from either side
    no_timeout = static_cluster("c", "127.0.0.1:1")
    no_timeout.connect_timeout = None
    assert convert_resource(cluster, no_timeout)[0].connect_timeout == 5.0
    assert from_cds.circuit_breakers == from_yaml.circuit_breakers == model.CircuitBreakers()
    assert (from_cds.lb_policy, from_cds.protocol, from_cds.idle_timeout) == \
        (from_yaml.lb_policy, from_yaml.protocol, from_yaml.idle_timeout)


def test_route_idle_timeout_is_honoured_from_rds():
    rc = xds_route_config("r", "c")
    rc.virtual_hosts[0].routes[0].route = RouteAction(cluster="c",
                                                      idle_timeout=datetime.timedelta(seconds=7))
    converted, warnings = convert_resource(route_config, rc)
    assert converted.virtual_hosts[0].routes[0].route.idle_timeout == 7.0 and not warnings


def test_max_ejection_percent_is_checked_on_both_paths():
    with pytest.raises(ConfigError) as e:
        yaml_cluster(outlier_detection={"max_ejection_percent": 101})
    assert e.value.errors == ["clusters[0].outlier_detection.max_ejection_percent: "
                              "expected at most 100"]
    c = static_cluster("c", "127.0.0.1:1")
    c.outlier_detection = OutlierDetection(max_ejection_percent=101)
    assert xds_errors(cluster, c) == ["resource.outlier_detection.max_ejection_percent: "
                                      "expected at most 100"]


def test_a_bolt_cluster_over_cds():
    c = static_cluster("rpc", "127.0.0.1:12200")
    c.metadata = Metadata(filter_metadata={"greenmesh": Struct.from_dict(
        {"protocol": "bolt", "keepalive_interval": "5s"})})
    converted, warnings = convert_resource(cluster, c)
    assert (converted.protocol, converted.keepalive_interval) == ("bolt", 5.0) and not warnings
    c.metadata = Metadata(filter_metadata={"greenmesh": Struct.from_dict({"protocol": "gopher"})})
    assert xds_errors(cluster, c) == ["resource.metadata.filter_metadata.greenmesh.protocol: "
                                      "expected one of bolt, http1, http2"]


def test_protocol_names_come_from_the_registry():
    cfg = {"clusters": [{"name": "c", "protocol": "thrift", "endpoints": ["127.0.0.1:1"]}]}
    with pytest.raises(ConfigError):
        load_dict(cfg)
    names = [*default_registry().names(), "thrift"]
    assert load_dict(cfg, protocols=names).clusters[0].protocol == "thrift"


HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ENVOY_SHAPED = """
listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 15001}}
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": HCM_TYPE
              stat_prefix: ingress
              codec_type: HTTP1
              route_config:
                name: default
                virtual_hosts:
                  - name: backend
                    domains: ["*"]
                    routes: [{match: {prefix: "/"}, route: {cluster: backend, timeout: 15s}}]
clusters:
  - name: backend
    type: STATIC
    connect_timeout: 0.250s
    lb_policy: LEAST_REQUEST
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 50}}
    circuit_breakers: {thresholds: [{max_connections: 7, max_retries: 1}]}
    load_assignment:
      cluster_name: backend
      endpoints:
        - lb_endpoints:
            - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
              load_balancing_weight: 2
"""

SHORT_SPELLING = """
listeners:
  - {name: ingress, address: 127.0.0.1:15001, protocol: http1, route_config: default}
route_configs:
  - name: default
    virtual_hosts:
      - name: backend
        domains: ["*"]
        routes: [{match: {prefix: "/"}, route: {cluster: backend, timeout: 15s}}]
clusters:
  - name: backend
    protocol: http2
    max_concurrent_streams: 50
    connect_timeout: 250ms
    lb_policy: least_request
    max_connections: 7
    max_retries: 1
    endpoints: [{address: 127.0.0.1:8080, weight: 2}]
"""


def test_envoys_shapes_and_greenmeshs_short_spellings_build_the_same_model():
    assert load_text(ENVOY_SHAPED.replace("HCM_TYPE", HCM_TYPE)) == load_text(SHORT_SPELLING)


def test_a_setting_given_both_ways_is_an_error():
    errs = load_errors("""
    clusters:
      - name: c
        endpoints: ["127.0.0.1:1"]
        max_requests: 5
        circuit_breakers: {thresholds: [{max_requests: 6}]}
        load_assignment: {endpoints: []}
    """)
    assert errs == ["clusters[0].endpoints: give endpoints or load_assignment, not both",
                    "clusters[0].max_requests: give circuit_breakers or the max_* shorthands, "
                    "not both"]


def load_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(textwrap.dedent(text))
    return e.value.errors


def test_envoy_fields_greenmesh_does_not_read_are_errors_in_a_file_warnings_from_xds():
    errs = load_errors("""
    clusters:
      - {name: c, endpoints: ["127.0.0.1:1"], dns_lookup_family: V4_ONLY}
    """)
    assert errs[0].startswith("clusters[0].dns_lookup_family: unknown key (expected one of name,")
    c = static_cluster("c", "127.0.0.1:1")
    c.ignore_health_on_host_removal = True
    _, warnings = convert_resource(cluster, c)
    assert warnings == ["resource.ignore_health_on_host_removal: not supported yet, ignored"]


def test_tls_from_envoys_transport_sockets(tmp_path):
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ca_path, chain, key = tmp_path / "ca.pem", tmp_path / "chain.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(ca_path)
    cert.private_key_pem.write_to_path(key)
    cert.cert_chain_pems[0].write_to_path(chain)
    cfg = load_text(textwrap.dedent(f"""
    listeners:
      - name: l
        address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
        filter_chains:
          - transport_socket:
              name: envoy.transport_sockets.tls
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
                common_tls_context:
                  tls_certificates: [{{certificate_chain: {{filename: {chain}}},
                                       private_key: {{filename: {key}}}}}]
            filters:
              - name: envoy.filters.network.http_connection_manager
                typed_config:
                  "@type": HCM_TYPE
                  rds: {{route_config_name: r}}
    route_configs:
      - {{name: r, virtual_hosts: [{{name: v, domains: ["*"],
          routes: [{{match: {{prefix: /}}, route: {{cluster: c}}}}]}}]}}
    clusters:
      - name: c
        endpoints: ["127.0.0.1:1"]
        transport_socket:
          name: envoy.transport_sockets.tls
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
            sni: api.internal
            common_tls_context: {{validation_context: {{trusted_ca: {{filename: {ca_path}}}}}}}
    """).replace("HCM_TYPE", HCM_TYPE))
    assert cfg.listeners[0].tls == model.TlsServer(str(chain), str(key))
    assert cfg.listeners[0].protocol == "auto"  # the HCM's AUTO codec
    assert cfg.clusters[0].tls == model.TlsClient("api.internal", str(ca_path))


def test_accept_http_10_from_envoys_hcm_and_the_short_spelling():
    from envoy_data_plane.envoy.config.core.v3 import Http1ProtocolOptions
    from envoy_data_plane.google.protobuf import Any

    from greenmesh.config.listeners import listener
    from tests.test_xds import listener as xds_listener
    lds = xds_listener("l", 8080, "r")
    hcm = lds.filter_chains[0].filters[0].typed_config.unpack()
    hcm.http_protocol_options = Http1ProtocolOptions(accept_http_10=True)
    lds.filter_chains[0].filters[0].typed_config = Any.pack(hcm)
    (from_lds, _), _ = convert_resource(listener, lds)
    short = load_dict({"listeners": [{"name": "l", "address": "127.0.0.1:8080",
                                      "route_config": "r", "accept_http_10": True}],
                       "route_configs": [{"name": "r", "virtual_hosts": [{
                           "name": "v", "domains": ["*"], "routes": [{
                               "match": {"prefix": "/"},
                               "direct_response": {"status": 200}}]}]}]})
    assert from_lds.accept_http_10 is short.listeners[0].accept_http_10 is True
    assert model.Listener("l", model.Address("h", 1), "r").accept_http_10 is False  # Envoy's
