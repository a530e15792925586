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
_LB_POLICIES = {ClusterLbPolicy.ROUND_ROBIN: "round_robin", ClusterLbPolicy.RANDOM: "random",
                ClusterLbPolicy.LEAST_REQUEST: "least_request",
                ClusterLbPolicy.RING_HASH: "ring_hash", ClusterLbPolicy.MAGLEV: "maglev"}


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
    lb = _LB_POLICIES.get(c.lb_policy)
    if lb is None:
        conv.warnings.append(f"{where}.lb_policy: {c.lb_policy.name} not supported yet, "
                             "round robin used")
        lb = "round_robin"
    conv.check(where, c, {"name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
                          "load_assignment", "circuit_breakers", "http2_protocol_options",
                          "typed_extension_protocol_options", "health_checks",
                          "outlier_detection"},
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
            if t.max_requests is not None:
                limits["max_requests"] = t.max_requests
            if t.max_retries is not None:
                limits["max_retries"] = t.max_retries
        if len(c.circuit_breakers.thresholds) > 1:
            conv.warnings.append(f"{where}.circuit_breakers: only the default priority is used")
    eds_name = None
    endpoints: tuple[model.Endpoint, ...] = ()
    if kind == ClusterDiscoveryType.EDS:
        cfg = c.eds_cluster_config
        eds_name = (cfg.service_name if cfg is not None and cfg.service_name else c.name)
    elif c.load_assignment is not None:
        endpoints = load_assignment(c.load_assignment, conv, where + ".load_assignment")
    extra: dict[str, Any] = {}
    if c.health_checks:
        extra["health_check"] = _health_check(c.health_checks[0], conv, f"{where}.health_checks[0]")
        if len(c.health_checks) > 1:
            conv.warnings.append(f"{where}.health_checks: only the first is used")
    if c.outlier_detection is not None:
        extra["outlier_detection"] = _outlier(c.outlier_detection, conv,
                                              f"{where}.outlier_detection")
    return model.Cluster(name=c.name, endpoints=endpoints, protocol=protocol, lb_policy=lb,
                         **extra,
                         connect_timeout=_seconds(c.connect_timeout, 5.0),
                         eds_service_name=eds_name,
                         circuit_breakers=model.CircuitBreakers(**limits))


def _health_check(h, conv: Conversion, where: str) -> model.HealthCheck:
    conv.check(where, h, {"timeout", "interval", "unhealthy_threshold", "healthy_threshold",
                          "http_health_check", "tcp_health_check"})
    path, statuses = None, ((200, 201),)
    if h.http_health_check is not None:
        hh = h.http_health_check
        conv.check(f"{where}.http_health_check", hh, {"path", "expected_statuses", "host"})
        path = hh.path or "/"
        if hh.expected_statuses:
            statuses = tuple((r.start, r.end) for r in hh.expected_statuses)
    elif h.tcp_health_check is None:
        raise ConvertError(f"{where}: only http_health_check and tcp_health_check are supported")
    return model.HealthCheck(http_path=path, expected_statuses=statuses,
                             interval=_seconds(h.interval, 5.0), timeout=_seconds(h.timeout, 1.0),
                             healthy_threshold=h.healthy_threshold or 1,
                             unhealthy_threshold=h.unhealthy_threshold or 2)


def _outlier(o, conv: Conversion, where: str) -> model.OutlierDetection:
    conv.check(where, o, {"consecutive_5xx", "base_ejection_time", "max_ejection_percent",
                          "max_ejection_time", "enforcing_consecutive_5xx",
                          "consecutive_gateway_failure",
                          "enforcing_consecutive_gateway_failure", "interval"})
    # Envoy enforces consecutive 5xx by default (100%) and gateway failures not at all (0%).
    c5xx = o.consecutive_5xx if o.consecutive_5xx is not None else 5
    if o.enforcing_consecutive_5xx == 0:
        c5xx = 0
    gateway = o.consecutive_gateway_failure if o.consecutive_gateway_failure is not None else 5
    if not o.enforcing_consecutive_gateway_failure:
        gateway = 0
    return model.OutlierDetection(
        consecutive_5xx=c5xx, consecutive_gateway_failure=gateway,
        base_ejection_time=_seconds(o.base_ejection_time, 30.0),
        max_ejection_time=_seconds(o.max_ejection_time, 300.0),
        max_ejection_percent=o.max_ejection_percent if o.max_ejection_percent is not None else 10)


def load_assignment(cla: ClusterLoadAssignment, conv: Conversion,
                    where: str | None = None) -> tuple[model.Endpoint, ...]:
    where = where or f"cluster_load_assignment {cla.cluster_name!r}"
    conv.check(where, cla, {"cluster_name", "endpoints", "policy"})
    out: list[model.Endpoint] = []
    # Locality weights become host weights: a locality's share split among its hosts by their
    # own weights (scaled to whole numbers), which picks localities as Envoy's weighted
    # locality balancing does, with one level of balancer.
    weighted = any(loc.load_balancing_weight for loc in cla.endpoints)
    for i, locality in enumerate(cla.endpoints):
        hosts_weight = sum(lb.load_balancing_weight or 1 for lb in locality.lb_endpoints) or 1
        scale = (locality.load_balancing_weight or 0) * 1000 / hosts_weight if weighted else None
        if weighted and not locality.load_balancing_weight:
            continue  # Envoy: without a weight a locality takes no traffic once any has one
        for j, lb in enumerate(locality.lb_endpoints):
            if lb.health_status in _SKIP_HEALTH:
                continue
            ep = lb.endpoint
            sa = ep.address.socket_address if ep is not None and ep.address else None
            if sa is None or not sa.address or not sa.port_value:
                raise ConvertError(f"{where}.endpoints[{i}].lb_endpoints[{j}].endpoint.address: "
                                   "expected a socket address with a port")
            weight = lb.load_balancing_weight or 1
            if scale is not None:
                weight = max(1, round(weight * scale))
            out.append(model.Endpoint(model.Address(sa.address, sa.port_value), weight,
                                      locality.priority or 0))
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


_HEADER_OP_FIELDS = {"request_headers_to_add", "request_headers_to_remove",
                     "response_headers_to_add", "response_headers_to_remove"}
_REDIRECT_CODES = (301, 302, 303, 307, 308)  # Envoy's RedirectResponseCode enum, in order


def _header_ops(msg, where: str) -> model.HeaderOps:
    def adds(options, key: str) -> tuple[model.HeaderValueOption, ...]:
        out = []
        for i, o in enumerate(options):
            if o.header is None:
                raise ConvertError(f"{where}.{key}[{i}].header: required")
            # append (the deprecated bool) wins when set; else the append_action (1 is
            # ADD_IF_ABSENT, treated as append; 2 and 3 overwrite).
            append = o.append if o.append is not None else int(o.append_action) < 2
            out.append(model.HeaderValueOption(o.header.key.lower(), o.header.value, append))
        return tuple(out)
    return model.HeaderOps(
        adds(msg.request_headers_to_add, "request_headers_to_add"),
        tuple(n.lower() for n in msg.request_headers_to_remove),
        adds(msg.response_headers_to_add, "response_headers_to_add"),
        tuple(n.lower() for n in msg.response_headers_to_remove))


def route_config(rc: RouteConfiguration, conv: Conversion, name: str | None = None
                 ) -> model.RouteConfig:
    name = name or rc.name
    where = f"route_configuration {name!r}"
    conv.check(where, rc, {"name", "virtual_hosts", *_HEADER_OP_FIELDS})
    vhosts = []
    for i, vh in enumerate(rc.virtual_hosts):
        vwhere = f"{where}.virtual_hosts[{i}]"
        conv.check(vwhere, vh, {"name", "domains", "routes", *_HEADER_OP_FIELDS})
        routes = [_route(r, conv, f"{vwhere}.routes[{j}]") for j, r in enumerate(vh.routes)]
        domains = tuple(d.lower() for d in vh.domains)
        if not domains:
            raise ConvertError(f"{vwhere}.domains: empty")
        vhosts.append(model.VirtualHost(vh.name, domains, tuple(routes),
                                        headers=_header_ops(vh, vwhere)))
    return model.RouteConfig(name, tuple(vhosts), headers=_header_ops(rc, where))


def _string_kinds(sm, where: str) -> dict:
    kinds = {}
    if sm is not None:
        for k in ("exact", "prefix", "suffix"):
            if getattr(sm, k) is not None:
                kinds[k] = getattr(sm, k)
        if sm.safe_regex is not None:
            kinds["regex"] = sm.safe_regex.regex
        if sm.contains is not None or sm.ignore_case:
            raise ConvertError(f"{where}.string_match: contains / ignore_case not supported")
    return kinds


def _match(m, conv: Conversion, where: str) -> model.RouteMatch:
    # A condition greenmesh cannot evaluate refuses the resource (misrouting is worse).
    conv.check(where, m, {"prefix", "path", "safe_regex", "path_separated_prefix", "headers",
                          "query_parameters", "case_sensitive"},
               refuse={"connect_matcher", "path_match_policy", "runtime_fraction", "cookies",
                       "grpc", "tls_context", "dynamic_metadata", "filter_state"})
    queries = []
    for k, q in enumerate(m.query_parameters):
        kinds = _string_kinds(q.string_match, f"{where}.query_parameters[{k}]")
        queries.append(model.QueryParameterMatcher(
            name=q.name, present=q.present_match if q.present_match is not None else True,
            **kinds))
    return model.RouteMatch(
        prefix=m.prefix, path=m.path,
        safe_regex=m.safe_regex.regex if m.safe_regex is not None else None,
        path_separated_prefix=m.path_separated_prefix or None,  # oneof members: None if unset
        case_sensitive=m.case_sensitive if m.case_sensitive is not None else True,
        headers=tuple(_header(h, f"{where}.headers[{k}]") for k, h in enumerate(m.headers)),
        query_parameters=tuple(queries))


def _route(r, conv: Conversion, where: str) -> model.Route:
    if r.match is None:
        raise ConvertError(f"{where}.match: required")
    conv.check(where, r, {"name", "match", "route", "direct_response", "redirect",
                          *_HEADER_OP_FIELDS}, refuse={"filter_action", "non_forwarding_action"})
    match = _match(r.match, conv, f"{where}.match")
    ops = _header_ops(r, where)
    if r.direct_response is not None:
        d = r.direct_response
        body = d.body.inline_string if d.body is not None and d.body.inline_string else ""
        if d.body is not None and (d.body.filename or d.body.inline_bytes):
            raise ConvertError(f"{where}.direct_response.body: only inline_string is supported")
        return model.Route(match=match, name=r.name, headers=ops,
                           direct_response=model.DirectResponse(d.status, body))
    if r.redirect is not None:
        d = r.redirect
        conv.check(f"{where}.redirect", d, {"https_redirect", "scheme_redirect", "host_redirect",
                                            "port_redirect", "path_redirect", "prefix_rewrite",
                                            "response_code", "strip_query"},
                   refuse={"regex_rewrite", "path_rewrite"})
        return model.Route(match=match, name=r.name, headers=ops, redirect=model.Redirect(
            scheme_redirect="https" if d.https_redirect else (d.scheme_redirect or None),
            host_redirect=d.host_redirect or None, port_redirect=d.port_redirect or None,
            path_redirect=d.path_redirect or None, prefix_rewrite=d.prefix_rewrite or None,
            response_code=_REDIRECT_CODES[int(d.response_code)], strip_query=d.strip_query))
    if r.route is None:
        raise ConvertError(f"{where}: expected route, redirect or direct_response")
    a = r.route
    conv.check(f"{where}.route", a, {"cluster", "timeout", "weighted_clusters", "cluster_header",
                                     "prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
                                     "auto_host_rewrite", "retry_policy", "hash_policy",
                                     "request_mirror_policies"},
               refuse={"cluster_specifier_plugin", "inline_cluster_specifier_plugin",
                       "path_rewrite_policy", "path_rewrite", "host_rewrite_header",
                       "host_rewrite_path_regex", "upgrade_configs"})
    weighted = ()
    if a.weighted_clusters is not None:
        wwhere = f"{where}.route.weighted_clusters"
        for k, c in enumerate(a.weighted_clusters.clusters):
            conv.check(f"{wwhere}.clusters[{k}]", c, {"name", "weight"},
                       refuse={"cluster_header"})
        weighted = tuple(model.WeightedCluster(c.name, c.weight or 0)
                         for c in a.weighted_clusters.clusters)
        if not any(c.weight for c in weighted):
            raise ConvertError(f"{wwhere}: the weights add up to 0")
    if not (a.cluster or weighted or a.cluster_header):
        raise ConvertError(f"{where}.route: expected cluster, weighted_clusters or "
                           "cluster_header")
    regex_rewrite = None
    if a.regex_rewrite is not None and a.regex_rewrite.pattern is not None:
        regex_rewrite = (a.regex_rewrite.pattern.regex, a.regex_rewrite.substitution)
    retry = _retry_policy(a.retry_policy, conv, f"{where}.route.retry_policy") \
        if a.retry_policy is not None else None
    hashes = []
    for k, h in enumerate(a.hash_policy):
        hwhere = f"{where}.route.hash_policy[{k}]"
        conv.check(hwhere, h, {"header", "cookie", "connection_properties", "terminal"})
        if h.header is not None:
            hashes.append(model.HashPolicy(header=h.header.header_name.lower()))
        elif h.cookie is not None:
            hashes.append(model.HashPolicy(cookie=h.cookie.name))
        elif h.connection_properties is not None and h.connection_properties.source_ip:
            hashes.append(model.HashPolicy(source_ip=True))
    mirrors = []
    for k, mp in enumerate(a.request_mirror_policies):
        conv.check(f"{where}.route.request_mirror_policies[{k}]", mp, {"cluster"})
        if mp.cluster:
            mirrors.append(mp.cluster)
    return model.Route(match=match, name=r.name, headers=ops, route=model.RouteAction(
        retry_policy=retry, hash_policy=tuple(hashes), request_mirror_policies=tuple(mirrors),
        cluster=a.cluster or None, timeout=_seconds(a.timeout, 15.0),
        weighted_clusters=weighted, cluster_header=(a.cluster_header or "").lower() or None,
        prefix_rewrite=a.prefix_rewrite or None, regex_rewrite=regex_rewrite,
        host_rewrite_literal=a.host_rewrite_literal or None,
        auto_host_rewrite=bool(a.auto_host_rewrite)))


def _retry_policy(p, conv: Conversion, where: str) -> model.RetryPolicy | None:
    conv.check(where, p, {"retry_on", "num_retries", "per_try_timeout", "retriable_status_codes",
                          "retry_back_off"})
    wanted = [c.strip() for c in (p.retry_on or "").split(",") if c.strip()]
    known = tuple(c for c in wanted if c in model.RETRY_ON)
    for c in wanted:
        if c not in model.RETRY_ON:
            conv.warnings.append(f"{where}.retry_on: {c!r} not supported yet, ignored")
    if not known:
        return None
    back_off = p.retry_back_off
    return model.RetryPolicy(
        retry_on=known, num_retries=p.num_retries if p.num_retries is not None else 1,
        per_try_timeout=_seconds(p.per_try_timeout, 0.0) or None,
        retriable_status_codes=tuple(p.retriable_status_codes),
        base_interval=_seconds(back_off.base_interval, 0.025) if back_off else 0.025,
        max_interval=(_seconds(back_off.max_interval, 0.0) or None) if back_off else None)


def _header(h, where: str) -> model.HeaderMatcher:
    kinds = _string_kinds(h.string_match, where)
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
