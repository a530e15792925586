"""Envoy v3 resources -> greenmesh's model: the same objects the YAML loader builds.

Real control planes send the full API. A field greenmesh cannot evaluate (a match condition,
a routing action, a listener it cannot serve) fails the resource, which is then NACKed:
misrouting is worse than refusing. A policy it cannot honour yet (retries, mirrors, CORS, ...)
is accepted and reported as a warning naming the resource and the field. Nothing is dropped
silently: every set field is either converted, refused or warned about.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterLbPolicy
from envoy_data_plane.envoy.config.core.v3 import HealthStatus
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import HttpProtocolOptions

from greenmesh import model

HCM_NAME = "envoy.filters.network.http_connection_manager"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_SKIP_HEALTH = (HealthStatus.UNHEALTHY, HealthStatus.DRAINING, HealthStatus.TIMEOUT)


class ConvertError(Exception):
    """A resource greenmesh must refuse; the message names the resource and the field."""


class Conversion:
    """Collects the warnings of one conversion (accepted, but not fully honoured)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def check(self, where: str, msg: Any, handled: set[str], refuse: set[str] = frozenset()
              ) -> None:
        """Every field of ``msg`` that is set must be handled, refused, or warned about."""
        for f in dataclasses.fields(msg):
            if f.name in handled:
                continue
            value = getattr(msg, f.name)
            if _is_set(value):
                if f.name in refuse:
                    raise ConvertError(f"{where}.{f.name}: not supported")
                self.warnings.append(f"{where}.{f.name}: not supported yet, ignored")


def _is_set(value: Any) -> bool:
    if value is None or value is False or value == 0 or value == "" or value == b"":
        return False
    if isinstance(value, list | dict | tuple):
        return bool(value)
    return True


def _seconds(d: datetime.timedelta | None, default: float) -> float:
    return d.total_seconds() if d is not None else default


def cluster(c: Cluster, conv: Conversion) -> model.Cluster:
    where = f"cluster {c.name!r}"
    if not c.name:
        raise ConvertError("cluster without a name")
    kind = c.type or ClusterDiscoveryType.STATIC
    if kind not in (ClusterDiscoveryType.STATIC, ClusterDiscoveryType.STRICT_DNS,
                    ClusterDiscoveryType.LOGICAL_DNS, ClusterDiscoveryType.EDS):
        raise ConvertError(f"{where}.type: {kind.name} is not supported")
    if c.lb_policy not in (ClusterLbPolicy.ROUND_ROBIN,):
        conv.warnings.append(f"{where}.lb_policy: {c.lb_policy.name} not supported yet, "
                             "round robin used")
    conv.check(where, c, {"name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
                          "load_assignment", "circuit_breakers", "http2_protocol_options",
                          "typed_extension_protocol_options"},
               refuse={"cluster_type", "transport_socket", "transport_socket_matches"})
    protocol = "http2" if c.http2_protocol_options is not None else "http1"
    for key, options in (c.typed_extension_protocol_options or {}).items():
        if key != HTTP_PROTOCOL_OPTIONS:
            conv.warnings.append(f"{where}.typed_extension_protocol_options[{key}]: ignored")
            continue
        opts = options.unpack()
        if isinstance(opts, HttpProtocolOptions) and opts.explicit_http_config is not None:
            if opts.explicit_http_config.http2_protocol_options is not None:
                protocol = "http2"
    limits: dict[str, int] = {}
    if c.circuit_breakers is not None:
        for t in c.circuit_breakers.thresholds[:1]:
            if t.max_connections is not None:
                limits["max_connections"] = t.max_connections
            if t.max_pending_requests is not None:
                limits["max_pending_requests"] = t.max_pending_requests
        if len(c.circuit_breakers.thresholds) > 1:
            conv.warnings.append(f"{where}.circuit_breakers: only the default priority is used")
    eds_name = None
    endpoints: tuple[model.Endpoint, ...] = ()
    if kind == ClusterDiscoveryType.EDS:
        cfg = c.eds_cluster_config
        eds_name = (cfg.service_name if cfg is not None and cfg.service_name else c.name)
    elif c.load_assignment is not None:
        endpoints = load_assignment(c.load_assignment, conv, where + ".load_assignment")
    return model.Cluster(name=c.name, endpoints=endpoints, protocol=protocol,
                         connect_timeout=_seconds(c.connect_timeout, 5.0),
                         eds_service_name=eds_name, **limits)


def load_assignment(cla: ClusterLoadAssignment, conv: Conversion,
                    where: str | None = None) -> tuple[model.Endpoint, ...]:
    where = where or f"cluster_load_assignment {cla.cluster_name!r}"
    conv.check(where, cla, {"cluster_name", "endpoints", "policy"})
    out: list[model.Endpoint] = []
    for i, locality in enumerate(cla.endpoints):
        if locality.priority:
            conv.warnings.append(f"{where}.endpoints[{i}].priority: priorities not supported "
                                 "yet, all priorities share the load")
        for j, lb in enumerate(locality.lb_endpoints):
            if lb.health_status in _SKIP_HEALTH:
                continue
            ep = lb.endpoint
            sa = ep.address.socket_address if ep is not None and ep.address else None
            if sa is None or not sa.address or not sa.port_value:
                raise ConvertError(f"{where}.endpoints[{i}].lb_endpoints[{j}].endpoint.address: "
                                   "expected a socket address with a port")
            out.append(model.Endpoint(model.Address(sa.address, sa.port_value),
                                      lb.load_balancing_weight or 1))
    return tuple(out)


def listener(lst: Listener, conv: Conversion) -> tuple[model.Listener, model.RouteConfig | None]:
    """The listener, and its inline route config if it has one (named after the listener)."""
    where = f"listener {lst.name!r}"
    sa = lst.address.socket_address if lst.address else None
    if sa is None:
        raise ConvertError(f"{where}.address: expected a socket address")
    conv.check(where, lst, {"name", "address", "filter_chains", "stat_prefix"},
               refuse={"default_filter_chain", "listener_filters"})
    if len(lst.filter_chains) != 1:
        raise ConvertError(f"{where}.filter_chains: expected exactly one filter chain")
    chain = lst.filter_chains[0]
    conv.check(f"{where}.filter_chains[0]", chain, {"filters", "name"},
               refuse={"filter_chain_match", "transport_socket"})
    hcms = [f for f in chain.filters if f.name == HCM_NAME or (
        f.typed_config is not None and f.typed_config.type_url.endswith("HttpConnectionManager"))]
    if len(hcms) != 1 or len(chain.filters) != 1:
        raise ConvertError(f"{where}.filter_chains[0].filters: expected one "
                           "http_connection_manager")
    hcm = hcms[0].typed_config.unpack()
    if not isinstance(hcm, HttpConnectionManager):
        raise ConvertError(f"{where}: the filter is not an HttpConnectionManager")
    hwhere = f"{where}.http_connection_manager"
    conv.check(hwhere, hcm, {"codec_type", "stat_prefix", "rds", "route_config", "http_filters",
                             "max_request_headers_kb"}, refuse={"scoped_routes"})
    for i, f in enumerate(hcm.http_filters):
        if f.name != "envoy.filters.http.router" and not (
                f.typed_config and f.typed_config.type_url.endswith(".Router")):
            conv.warnings.append(f"{hwhere}.http_filters[{i}] {f.name!r}: not supported yet, "
                                 "skipped")
    protocol = {HttpConnectionManagerCodecType.HTTP1: "http1",
                HttpConnectionManagerCodecType.HTTP2: "http2"}.get(hcm.codec_type, "auto")
    inline = None
    if hcm.rds is not None:
        route_name = hcm.rds.route_config_name
    elif hcm.route_config is not None:
        route_name = hcm.route_config.name or f"{lst.name}-inline"
        inline = route_config(hcm.route_config, conv, name=route_name)
    else:
        raise ConvertError(f"{hwhere}: expected rds or route_config")
    extra = {}
    if hcm.max_request_headers_kb:
        extra["max_request_headers_kb"] = hcm.max_request_headers_kb
    return model.Listener(name=lst.name, address=model.Address(sa.address or "0.0.0.0",
                                                               sa.port_value),
                          route_config=route_name, protocol=protocol, **extra), inline


def route_config(rc: RouteConfiguration, conv: Conversion, name: str | None = None
                 ) -> model.RouteConfig:
    name = name or rc.name
    where = f"route_configuration {name!r}"
    conv.check(where, rc, {"name", "virtual_hosts"})
    vhosts = []
    for i, vh in enumerate(rc.virtual_hosts):
        vwhere = f"{where}.virtual_hosts[{i}]"
        conv.check(vwhere, vh, {"name", "domains", "routes"})
        routes = [_route(r, conv, f"{vwhere}.routes[{j}]") for j, r in enumerate(vh.routes)]
        domains = tuple(d.lower() for d in vh.domains)
        if not domains:
            raise ConvertError(f"{vwhere}.domains: empty")
        vhosts.append(model.VirtualHost(vh.name, domains, tuple(routes)))
    return model.RouteConfig(name, tuple(vhosts))


def _route(r, conv: Conversion, where: str) -> model.Route:
    m = r.match
    if m is None:
        raise ConvertError(f"{where}.match: required")
    # A condition greenmesh cannot evaluate refuses the resource (misrouting is worse).
    conv.check(f"{where}.match", m, {"prefix", "path", "headers", "case_sensitive"},
               refuse={"safe_regex", "connect_matcher", "path_separated_prefix",
                       "path_match_policy", "runtime_fraction", "query_parameters", "cookies",
                       "grpc", "tls_context", "dynamic_metadata", "filter_state"})
    if m.case_sensitive is not None and not m.case_sensitive:
        raise ConvertError(f"{where}.match.case_sensitive: false is not supported")
    headers = tuple(_header(h, f"{where}.match.headers[{k}]") for k, h in enumerate(m.headers))
    if r.route is None:
        raise ConvertError(f"{where}: only route actions are supported (not redirect or "
                           "direct_response yet)")
    a = r.route
    conv.check(f"{where}.route", a, {"cluster", "timeout"},
               refuse={"cluster_header", "weighted_clusters", "cluster_specifier_plugin",
                       "inline_cluster_specifier_plugin", "prefix_rewrite", "regex_rewrite",
                       "path_rewrite_policy", "path_rewrite", "host_rewrite_literal",
                       "auto_host_rewrite", "host_rewrite_header", "host_rewrite_path_regex",
                       "upgrade_configs"})
    if not a.cluster:
        raise ConvertError(f"{where}.route.cluster: required")
    conv.check(where, r, {"name", "match", "route"}, refuse={"redirect", "direct_response"})
    return model.Route(match=model.RouteMatch(prefix=m.prefix, path=m.path, headers=headers),
                       route=model.RouteAction(a.cluster, _seconds(a.timeout, 15.0)),
                       name=r.name)


def _header(h, where: str) -> model.HeaderMatcher:
    sm = h.string_match
    kinds = {}
    if sm is not None:
        for k in ("exact", "prefix", "suffix"):
            if getattr(sm, k) is not None:
                kinds[k] = getattr(sm, k)
        if sm.safe_regex is not None:
            kinds["regex"] = sm.safe_regex.regex
        if sm.contains is not None or sm.ignore_case:
            raise ConvertError(f"{where}.string_match: contains / ignore_case not supported")
    for legacy, k in (("exact_match", "exact"), ("prefix_match", "prefix"),
                      ("suffix_match", "suffix")):
        if getattr(h, legacy, None) is not None:
            kinds[k] = getattr(h, legacy)
    if getattr(h, "safe_regex_match", None) is not None:
        kinds["regex"] = h.safe_regex_match.regex
    if getattr(h, "range_match", None) is not None or getattr(h, "contains_match", None):
        raise ConvertError(f"{where}: range/contains matches are not supported")
    return model.HeaderMatcher(name=h.name.lower(), invert=bool(h.invert_match),
                               present=h.present_match if h.present_match is not None else True,
                               **kinds)
