"""Clusters (Envoy's Cluster and ClusterLoadAssignment) -> the model, for the YAML file, CDS
and EDS alike.

A cluster is read in Envoy's shape (``load_assignment``, ``circuit_breakers.thresholds``,
``transport_socket``, ``typed_extension_protocol_options``...) or with greenmesh's shorter
spellings (``endpoints``, ``protocol``, ``max_requests``, ``tls``...), which say the same things;
a setting may come from one or the other, not both. greenmesh's own settings that Envoy has no
field for (a bolt upstream, the heartbeat interval) reach it from a control plane under the
cluster's ``metadata.filter_metadata.greenmesh``, spelled as in the YAML file.
"""

from __future__ import annotations

from typing import Any

from greenmesh import model
from greenmesh.config.reader import (
    INVALID,
    Invalid,
    Reader,
    count,
    duration,
    integer,
    join,
    model_default,
    one_of,
    own_settings,
    path_prefix,
    percent,
    port,
    positive,
    string,
    text,
    typed,
)
from greenmesh.config.reader import address as host_port
from greenmesh.config.tls import client_tls
from greenmesh.upstream.lb import POLICIES

#: EDS health statuses whose endpoints take no traffic.
SKIPPED_HEALTH = ("UNHEALTHY", "DRAINING", "TIMEOUT")
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_DISCOVERY = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS")
_ENVOY_KEYS = ("name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
               "load_assignment", "circuit_breakers", "http2_protocol_options",
               "http_protocol_options", "typed_extension_protocol_options", "health_checks",
               "outlier_detection", "transport_socket", "metadata",
               "per_connection_buffer_limit_bytes")
_BREAKERS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
# greenmesh's shorter spellings, and its own settings (also read from the greenmesh metadata).
_OWN_KEYS = ("protocol", "endpoints", "tls", "idle_timeout", "max_concurrent_streams",
             "keepalive_interval", *_BREAKERS)


def _lb_policy(value: Any) -> str:
    """greenmesh's names (``round_robin``) or Envoy's (``ROUND_ROBIN``)."""
    name = value.lower() if isinstance(value, str) else None
    if name not in POLICIES:
        raise Invalid(f"expected one of {', '.join(POLICIES)}")
    return name


def cluster(r: Reader, v: Any, path: str) -> model.Cluster | None:
    obj = r.mapping(v, path, (*_ENVOY_KEYS, *_OWN_KEYS),
                    refuse=("cluster_type", "transport_socket_matches"))
    if obj is None:
        return None
    mark = r.mark()
    own = own_settings(r, obj, path, _OWN_KEYS, ("protocol", "idle_timeout",
                                                  "max_concurrent_streams", "keepalive_interval"))
    name = r.field(obj, path, "name", string)
    kind = obj.get("type", "STATIC")
    if not isinstance(kind, str) or kind not in _DISCOVERY:
        r.error(join(path, "type"), f"{kind} is not supported" if not r.strict else
                f"expected one of {', '.join(_DISCOVERY)}")
    lb = "round_robin"
    if obj.get("lb_policy") is not None:
        try:
            lb = _lb_policy(obj["lb_policy"])
        except Invalid as e:
            if r.strict:
                r.error(join(path, "lb_policy"), str(e))
            else:
                r.not_honoured(join(path, "lb_policy"),
                               f"{obj['lb_policy']} not supported yet, round robin used")
    values: dict[str, Any] = dict(
        connect_timeout=r.field(obj, path, "connect_timeout", duration,
                                model_default(model.Cluster, "connect_timeout")),
        lb_policy=lb)
    for key, convert in (("idle_timeout", duration), ("max_concurrent_streams", positive),
                         ("keepalive_interval", duration),
                         ("per_connection_buffer_limit_bytes", positive)):
        src, src_path = own.get(key, (obj, path))
        values[key] = r.field(src, src_path, key, convert, model_default(model.Cluster, key))
    protocol = _protocol(r, obj, path, own, values)
    endpoints, eds_name = _endpoints(r, obj, path, own, name or "", kind)
    breakers = _breakers(r, obj, path, own)
    tls = client_tls(r, obj, path, own)
    outlier = r.section(obj, path, "outlier_detection", outlier_detection)
    checks = [health_check(r, h, p) for p, h in r.items(obj, path, "health_checks")]
    if len(checks) > 1:
        r.not_honoured(join(path, "health_checks"), "only one health check is supported")
    if r.failed_since(mark) or name is None or INVALID in (outlier, tls):
        return None
    return model.Cluster(name=name, endpoints=endpoints, protocol=protocol, tls=tls,
                         eds_service_name=eds_name, circuit_breakers=breakers,
                         outlier_detection=outlier, health_check=checks[0] if checks else None,
                         **values)


def _protocol(r: Reader, obj: dict, path: str, own: dict[str, tuple[dict, str]],
              values: dict[str, Any]) -> str:
    """The upstream protocol: greenmesh's ``protocol`` (any registered one), or HTTP/2 from
    Envoy's protocol options (which may also set the idle timeout and stream limit)."""
    envoy = None
    if obj.get("http2_protocol_options") is not None:
        envoy = "http2"
        _http2_options(r, obj["http2_protocol_options"], join(path, "http2_protocol_options"),
                       values)
    if obj.get("http_protocol_options") is not None:
        r.mapping(obj["http_protocol_options"], join(path, "http_protocol_options"), ())
        envoy = envoy or "http1"
    topts = obj.get("typed_extension_protocol_options")
    if topts is not None:
        tpath = join(path, "typed_extension_protocol_options")
        t = r.mapping(topts, tpath, (HTTP_PROTOCOL_OPTIONS,))
        if t is not None and t.get(HTTP_PROTOCOL_OPTIONS) is not None:
            envoy = _http_protocol_options(r, t[HTTP_PROTOCOL_OPTIONS],
                                           join(tpath, HTTP_PROTOCOL_OPTIONS), values) or envoy
    if "protocol" not in own:
        return envoy or "http1"
    src, src_path = own["protocol"]
    protocol = r.field(src, src_path, "protocol", one_of(r.protocols), "http1")
    if envoy is not None and protocol != envoy:
        r.error(join(src_path, "protocol"), f"{protocol} contradicts the protocol options "
                                            f"({envoy})")
    return protocol or "http1"


def _http2_options(r: Reader, v: Any, path: str, values: dict[str, Any]) -> None:
    h2 = r.mapping(v, path, ("max_concurrent_streams",))
    if h2 is not None and h2.get("max_concurrent_streams") is not None:
        values["max_concurrent_streams"] = r.field(h2, path, "max_concurrent_streams", positive)


def _http_protocol_options(r: Reader, v: Any, path: str, values: dict[str, Any]) -> str | None:
    """Envoy's HttpProtocolOptions: the explicit protocol and the common idle timeout."""
    o = typed(r, v, path, "HttpProtocolOptions", ("explicit_http_config",
                                                  "common_http_protocol_options"))
    if o is None:
        return None
    protocol = None
    if o.get("explicit_http_config") is not None:
        epath = join(path, "explicit_http_config")
        e = r.mapping(o["explicit_http_config"], epath, ("http_protocol_options",
                                                          "http2_protocol_options"))
        if e is not None and e.get("http2_protocol_options") is not None:
            protocol = "http2"
            _http2_options(r, e["http2_protocol_options"], join(epath, "http2_protocol_options"),
                           values)
        elif e is not None and e.get("http_protocol_options") is not None:
            protocol = "http1"
    if o.get("common_http_protocol_options") is not None:
        cpath = join(path, "common_http_protocol_options")
        c = r.mapping(o["common_http_protocol_options"], cpath, ("idle_timeout",))
        if c is not None and c.get("idle_timeout") is not None:
            values["idle_timeout"] = r.field(c, cpath, "idle_timeout", duration)
    return protocol


def _endpoints(r: Reader, obj: dict, path: str, own: dict[str, tuple[dict, str]], name: str,
               kind: str) -> tuple[tuple[model.Endpoint, ...], str | None]:
    """The hosts (shorthand ``endpoints`` or Envoy's ``load_assignment``), or for an EDS
    cluster the service name its endpoints come under."""
    if kind == "EDS":
        for key in ("endpoints", "load_assignment"):
            if obj.get(key) is not None:
                r.error(join(path, key), "an EDS cluster's endpoints come from EDS")
        service = name
        if obj.get("eds_cluster_config") is not None:
            epath = join(path, "eds_cluster_config")
            e = r.mapping(obj["eds_cluster_config"], epath, ("eds_config", "service_name"))
            if e is not None:
                service = r.field(e, epath, "service_name", text, "") or name
        return (), service
    if obj.get("eds_cluster_config") is not None:
        r.error(join(path, "eds_cluster_config"), "only for a cluster of type EDS")
    if "endpoints" in own and obj.get("load_assignment") is not None:
        r.error(join(path, "endpoints"), "give endpoints or load_assignment, not both")
    if obj.get("load_assignment") is not None:
        return load_assignment(r, obj["load_assignment"], join(path, "load_assignment")) or (), \
            None
    built = [_short_endpoint(r, e, p) for p, e in r.items(obj, path, "endpoints")]
    return tuple(e for e in built if e is not None), None


def _short_endpoint(r: Reader, v: Any, path: str) -> model.Endpoint | None:
    if isinstance(v, str):  # shorthand: just "host:port"
        v = {"address": v}
    obj = r.mapping(v, path, ("address", "weight", "priority"))
    if obj is None:
        return None
    mark = r.mark()
    address = r.field(obj, path, "address", host_port)
    weight = r.field(obj, path, "weight", positive, 1)
    priority = r.field(obj, path, "priority", count, 0)
    if address is not None and address.port == 0:
        r.error(join(path, "address"), "expected a port between 1 and 65535")
    if r.failed_since(mark) or address is None or weight is None or priority is None:
        return None
    return model.Endpoint(address=address, weight=weight, priority=priority)


def socket_address(r: Reader, v: Any, path: str, allow_port_0: bool = False
                   ) -> model.Address | None:
    """Envoy's Address: ``{socket_address: {address, port_value}}``."""
    a = r.mapping(v, path, ("socket_address",), refuse=("pipe", "envoy_internal_address"))
    if a is None:
        return None
    spath = join(path, "socket_address")
    sa = r.mapping(a.get("socket_address"), spath, ("address", "port_value", "protocol",
                                                    "ipv4_compat"), refuse=("named_port",
                                                                            "resolver_name"))
    if sa is None:
        return None
    host = r.field(sa, spath, "address", string)
    p = r.field(sa, spath, "port_value", port, 0)
    if p == 0 and not allow_port_0:
        r.error(join(spath, "port_value"), "expected a port between 1 and 65535")
        return None
    return None if host is None or p is None else model.Address(host, p)


def load_assignment(r: Reader, v: Any, path: str) -> tuple[model.Endpoint, ...] | None:
    """Envoy's ClusterLoadAssignment (a cluster's, or an EDS resource).

    Locality weights become host weights: a locality's share split among its hosts by their own
    weights (scaled to whole numbers), which picks localities as Envoy's weighted locality
    balancing does, with one level of balancer. Unhealthy, draining and timed-out endpoints
    take no traffic."""
    obj = r.mapping(v, path, ("cluster_name", "endpoints", "policy"))
    if obj is None:
        return None
    mark = r.mark()
    if obj.get("policy") is not None:
        r.mapping(obj["policy"], join(path, "policy"), ())
    localities = r.items(obj, path, "endpoints")
    weighted = any(isinstance(loc, dict) and loc.get("load_balancing_weight")
                   for _, loc in localities)
    out: list[model.Endpoint] = []
    for lpath, loc in localities:
        lo = r.mapping(loc, lpath, ("lb_endpoints", "load_balancing_weight", "priority",
                                    "locality"))
        if lo is None:
            continue
        lweight = r.field(lo, lpath, "load_balancing_weight", count, 0)
        priority = r.field(lo, lpath, "priority", count, 0)
        where = r.mapping(lo.get("locality") or {}, join(lpath, "locality"),
                          ("region", "zone", "sub_zone"))
        locality = "/".join(str(where.get(k) or "") for k in ("region", "zone", "sub_zone")
                            ).rstrip("/") if where else ""
        hosts = [(p, _lb_endpoint(r, e, p)) for p, e in r.items(lo, lpath, "lb_endpoints")]
        if weighted and not lweight:
            continue  # Envoy: without a weight a locality takes no traffic once any has one
        hosts_weight = sum(h[1] for _, h in hosts if h is not None) or 1
        scale = (lweight or 0) * 1000 / hosts_weight if weighted else None
        for _, h in hosts:
            if h is None or h[2]:  # broken, or not taking traffic
                continue
            address, weight, _ = h
            if scale is not None:
                weight = max(1, round(weight * scale))
            out.append(model.Endpoint(address, weight, priority or 0, locality))
    return None if r.failed_since(mark) else tuple(out)


def _lb_endpoint(r: Reader, v: Any, path: str) -> tuple[model.Address, int, bool] | None:
    """(address, weight, skipped for its health status)."""
    lb = r.mapping(v, path, ("endpoint", "health_status", "load_balancing_weight", "metadata"))
    if lb is None:
        return None
    epath = join(path, "endpoint")
    ep = r.mapping(lb.get("endpoint"), epath, ("address", "hostname", "health_check_config"))
    address = socket_address(r, ep.get("address"), join(epath, "address")) if ep else None
    weight = r.field(lb, path, "load_balancing_weight", positive, 1)
    health = lb.get("health_status", "UNKNOWN")
    if address is None or weight is None:
        return None
    return address, weight, health in SKIPPED_HEALTH


def _breakers(r: Reader, obj: dict, path: str, own: dict[str, tuple[dict, str]]
              ) -> model.CircuitBreakers:
    limits: dict[str, Any] = {}
    short = [k for k in _BREAKERS if k in own]
    if obj.get("circuit_breakers") is not None:
        cpath = join(path, "circuit_breakers")
        if short:
            r.error(join(path, short[0]), "give circuit_breakers or the max_* shorthands, "
                                          "not both")
        cb = r.mapping(obj["circuit_breakers"], cpath, ("thresholds",))
        for i, (tpath, t) in enumerate(r.items(cb or {}, cpath, "thresholds")):
            to = r.mapping(t, tpath, ("priority", *_BREAKERS, "track_remaining"))
            if to is None:
                continue
            if to.get("priority", "DEFAULT") != "DEFAULT" or i > 0:
                r.not_honoured(tpath, "only the default priority's thresholds are used")
                continue
            limits.update(_breaker_fields(r, to, tpath, _BREAKERS))
    else:
        for key in short:
            src, src_path = own[key]
            limits.update(_breaker_fields(r, src, src_path, (key,)))
    return model.CircuitBreakers(**{k: v for k, v in limits.items() if v is not None})


def _breaker_fields(r: Reader, obj: dict, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    converters = {"max_connections": positive, "max_pending_requests": count,
                  "max_requests": positive, "max_retries": count}
    return {k: r.field(obj, path, k, converters[k], None) for k in keys}


def health_check(r: Reader, v: Any, path: str) -> model.HealthCheck | None:
    obj = r.mapping(v, path, ("timeout", "interval", "healthy_threshold", "unhealthy_threshold",
                              "http_health_check", "tcp_health_check"),
                    refuse=("grpc_health_check", "custom_health_check"))
    if obj is None:
        return None
    mark = r.mark()
    if (obj.get("http_health_check") is None) == (obj.get("tcp_health_check") is None):
        r.error(path, "expected one of http_health_check, tcp_health_check")
        return None
    http_path, statuses = None, model_default(model.HealthCheck, "expected_statuses")
    if obj.get("http_health_check") is not None:
        hpath = join(path, "http_health_check")
        h = r.mapping(obj["http_health_check"], hpath, ("path", "expected_statuses", "host"))
        if h is None:
            return None
        http_path = r.field(h, hpath, "path", path_prefix)
        ranges = []
        for p, item in r.items(h, hpath, "expected_statuses"):
            rng = r.mapping(item, p, ("start", "end"))
            start = r.field(rng, p, "start", integer) if rng is not None else None
            end = r.field(rng, p, "end", integer) if rng is not None else None
            if start is not None and end is not None:
                if not 100 <= start < end <= 600:
                    r.error(p, "expected 100 <= start < end <= 600")
                ranges.append((start, end))
        if ranges:
            statuses = tuple(ranges)
    else:
        tpath = join(path, "tcp_health_check")
        t = r.mapping(obj["tcp_health_check"], tpath, ())
        if t:  # send/receive payloads: greenmesh only checks that the connect succeeds
            r.not_honoured(tpath, "payload checks are not supported, a connect is checked")
    values = r.fields(obj, path, model.HealthCheck, (
        ("interval", duration), ("timeout", duration), ("healthy_threshold", positive),
        ("unhealthy_threshold", positive)))
    if r.failed_since(mark):
        return None
    return model.HealthCheck(http_path=http_path, expected_statuses=statuses, **values)


def outlier_detection(r: Reader, v: Any, path: str) -> model.OutlierDetection | None:
    table = (("consecutive_5xx", count), ("consecutive_gateway_failure", count),
             ("enforcing_consecutive_5xx", percent),
             ("enforcing_consecutive_gateway_failure", percent),
             ("base_ejection_time", duration), ("max_ejection_time", duration),
             ("max_ejection_percent", percent))
    obj = r.mapping(v, path, (*(k for k, _ in table), "interval"))
    if obj is None:
        return None
    mark = r.mark()
    if obj.get("interval") is not None:  # greenmesh ejects when the rule trips, not on a timer
        r.field(obj, path, "interval", duration)
    values = r.fields(obj, path, model.OutlierDetection, table)
    return None if r.failed_since(mark) else model.OutlierDetection(**values)
