"""The config model: the one shape both the YAML loader and the xDS converters produce.

Every object is frozen and slotted: a new config is a new object graph built off to the side and
swapped in whole, so a request in flight always sees one consistent snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: Address
    weight: int = 1
    priority: int = 0  # 0 first; higher levels take the load the lower ones cannot
    # Envoy's locality as region/zone/sub_zone (EDS), shown by /clusters.
    locality: str = ""


@dataclass(frozen=True, slots=True)
class TlsServer:
    """A listener's certificate (PEM files)."""

    certificate_chain: str
    private_key: str


@dataclass(frozen=True, slots=True)
class TlsClient:
    """TLS towards a cluster's hosts. With ``ca`` the chain and the name are verified (against
    ``sni``, else the host); without it nothing is verified, as in Envoy without a
    validation context."""

    sni: str = ""
    ca: str = ""


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Envoy's passive health: hosts failing in a row are ejected for a while (longer each
    time), never more than max_ejection_percent of them (but always one)."""

    consecutive_5xx: int = 5  # 5xx responses, connect failures and resets
    consecutive_gateway_failure: int = 5  # 502/503/504, connect failures and resets
    # The chance (%) that an ejection a rule calls for happens (Envoy's enforcing_*).
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checking (Envoy's): an HTTP GET whose status must be expected, or a TCP
    connect; a host flips after so many results in a row."""

    http_path: str | None = None  # None: a TCP connect check
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)  # [start, end) ranges
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """Envoy's per-cluster limits (its defaults): upstream connections, requests waiting for
    one, requests and retries in flight."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...] = ()
    protocol: str = "http1"
    lb_policy: str = "round_robin"
    connect_timeout: float = 5.0  # Envoy's default
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    # Idle pooled connections are closed after this long.
    idle_timeout: float = 60.0
    tls: TlsClient | None = None
    # Multiplexed protocols: streams one connection carries at most (HTTP/2: also the peer's).
    max_concurrent_streams: int = 100
    # RPC protocols with heartbeats (bolt): an idle connection is probed this often and closed
    # when a probe goes unanswered for as long.
    keepalive_interval: float = 15.0
    # Bytes queued for an upstream connection before its streams wait (Envoy's field).
    per_connection_buffer_limit_bytes: int = 1 << 20
    # Set for clusters whose endpoints come from EDS, under this service name.
    eds_service_name: str | None = None
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """Envoy's v3 header matcher: one of exact/prefix/suffix/regex, or presence alone."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None  # a full match, like Envoy's safe_regex
    present: bool = True
    invert: bool = False


@dataclass(frozen=True, slots=True)
class QueryParameterMatcher:
    """Envoy's: the parameter present, or its value matched exactly/prefix/suffix/regex."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None
    present: bool = True


@dataclass(frozen=True, slots=True)
class MetadataMatcher:
    """Envoy's metadata matcher on a request's dynamic metadata (what filters such as
    header_to_metadata set before routing): the value under ``namespace`` at ``path``, matched
    as a string (exact/prefix/suffix/regex) or for presence alone."""

    namespace: str
    path: tuple[str, ...]
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None
    present: bool = True
    invert: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    prefix: str | None = None
    path: str | None = None
    safe_regex: str | None = None  # the whole path (without the query), full match
    path_separated_prefix: str | None = None  # /api matches /api and /api/x, not /apix
    case_sensitive: bool = True
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()
    dynamic_metadata: tuple[MetadataMatcher, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpFilter:
    """One filter of a listener's chain (Envoy's http_filters entry): its name (what per-route
    overrides refer to), the type that implements it (a registry key: Envoy's type URL without
    its prefix, or a greenmesh/entry-point name) and its config as that type parsed it."""

    name: str
    kind: str
    config: Any = None


@dataclass(frozen=True, slots=True)
class FilterOverride:
    """A per-route filter setting (Envoy's typed_per_filter_config): the filter turned off, or
    given a config of its own (of type ``kind``) on this route or virtual host."""

    disabled: bool = False
    kind: str = ""
    config: Any = None


@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    key: str
    value: str
    append: bool = True  # False: replace any existing value


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Header manipulation (Envoy's *_headers_to_add / *_headers_to_remove)."""

    request_add: tuple[HeaderValueOption, ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[HeaderValueOption, ...] = ()
    response_remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


RETRY_ON: Final = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes",
                   "refused-stream")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Envoy's retry_policy. Each retry picks a host again; a request body is replayed only
    if it fit in the replay buffer."""

    retry_on: tuple[str, ...]
    num_retries: int = 1
    per_try_timeout: float | None = None
    retriable_status_codes: tuple[int, ...] = ()
    base_interval: float = 0.025  # exponential back-off with jitter, as Envoy
    max_interval: float | None = None  # default: 10 x base_interval
    # Envoy's retry_host_predicate previous_hosts: a retry avoids the hosts already tried,
    # picking up to 1 + host_selection_retry_max_attempts times.
    previous_hosts: bool = False
    host_selection_retry_max_attempts: int = 1


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """What a hash-based load balancer hashes: a header, a cookie, or the client's IP."""

    header: str | None = None
    cookie: str | None = None
    source_ip: bool = False


@dataclass(frozen=True, slots=True)
class RouteAction:
    """Exactly one of cluster, weighted_clusters, cluster_header names the upstream."""

    cluster: str | None = None
    timeout: float = 15.0  # Envoy's default route timeout; 0 disables it
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    cluster_header: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: tuple[str, str] | None = None  # (pattern, substitution)
    host_rewrite_literal: str | None = None
    auto_host_rewrite: bool = False
    retry_policy: RetryPolicy | None = None
    hash_policy: tuple[HashPolicy, ...] = ()
    # Clusters that get a copy of each request (fire and forget; host gets "-shadow").
    request_mirror_policies: tuple[str, ...] = ()
    # The longest wait for the upstream's next bytes (head or body); 0: none.
    idle_timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str = ""


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme_redirect: str | None = None
    host_redirect: str | None = None
    port_redirect: int | None = None
    path_redirect: str | None = None
    prefix_rewrite: str | None = None
    response_code: int = 301
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """Exactly one of route, direct_response, redirect."""

    match: RouteMatch
    route: RouteAction | None = None
    name: str = ""
    direct_response: DirectResponse | None = None
    redirect: Redirect | None = None
    headers: HeaderOps = HeaderOps()
    # Per-filter settings by filter name (Envoy's typed_per_filter_config).
    filter_overrides: tuple[tuple[str, FilterOverride], ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    headers: HeaderOps = HeaderOps()
    filter_overrides: tuple[tuple[str, FilterOverride], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    headers: HeaderOps = HeaderOps()
    filter_overrides: tuple[tuple[str, FilterOverride], ...] = ()


#: Envoy's stream_idle_timeout default (5 minutes): a listener's, and the in-process calls'.
STREAM_IDLE_TIMEOUT: Final = 300.0


@dataclass(frozen=True, slots=True)
class AccessLogFormat:
    """A listener's own access log (Envoy's file access logger): where, and in what format."""

    path: str | None = None  # None: the process's log stream
    text_format: str | None = None  # Envoy's command operators; None (and no json): Envoy's default
    json_format: tuple[tuple[str, str], ...] | None = None  # key -> format string


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: Address
    route_config: str
    protocol: str = "http1"
    # Downstream connections open at once; None: no limit, as Envoy (the fd limit bounds them).
    max_connections: int | None = None
    # Bytes of request line plus headers before the request is refused with 431 (Envoy: 60 KiB).
    max_request_headers_kb: int = 60
    # Header fields in a request head before 431 (Envoy's max_headers_count).
    max_headers_count: int = 100
    # From a request's first byte to the end of its head (slowloris): then 408 and close
    # (Envoy's request_headers_timeout, which Envoy leaves off; a proxy facing clients wants it).
    request_headers_timeout: float | None = 60.0
    # Streams open at once on one downstream HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS),
    # requests in flight on one bolt connection (past it the connection is not read).
    max_concurrent_streams: int = 100
    # From a request's head to the end of its response, whatever it is waiting for: then 408, or
    # a reset once the response began (Envoy's max_stream_duration, off by default as Envoy's).
    max_stream_duration: float | None = None
    # The largest frame a client may send: HTTP/2's SETTINGS_MAX_FRAME_SIZE (None: 16384) and
    # a whole RPC frame (None: 16 MiB). Within 16384 to 16777215, HTTP/2's range.
    max_frame_size: int | None = None
    # Bytes queued for a slow client (or held by RPC requests in flight) before greenmesh reads
    # no more from that connection (Envoy's per_connection_buffer_limit_bytes).
    per_connection_buffer_limit_bytes: int = 1 << 20
    # A stream that moves no bytes either way for this long: 408, or a reset once the response
    # began (Envoy's stream_idle_timeout, 5 minutes; a route's idle_timeout overrides it
    # upstream). None: off.
    stream_idle_timeout: float | None = STREAM_IDLE_TIMEOUT
    idle_timeout: float = 300.0
    access_log: bool = True
    # Its own format and file, instead of the process's JSON lines (None: those).
    access_log_format: AccessLogFormat | None = None
    # HTTP requests without x-request-id get a random one (Envoy's generate_request_id).
    generate_request_id: bool = True
    tls: TlsServer | None = None
    # HTTP/1.0 requests served (Envoy's http_protocol_options.accept_http_10); else 426.
    accept_http_10: bool = False
    # The address is shared with other processes binding it the same way (SO_REUSEPORT: the
    # kernel spreads connections), as workers and gunicorn workers each embedding a mesh do
    # (Envoy's enable_reuse_port; off unless asked, so a port taken by mistake is an error).
    reuse_port: bool = False
    # The stream filters every request passes before the router (which is always last).
    http_filters: tuple[HttpFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class Admin:
    address: Address


@dataclass(frozen=True, slots=True)
class XdsNode:
    id: str
    cluster: str = ""


@dataclass(frozen=True, slots=True)
class Xds:
    """An ADS control plane (gRPC, Envoy's v3 API)."""

    server: Address
    node: XdsNode
    initial_fetch_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class OverloadAction:
    """One of Envoy's overload actions, taken while the memory monitor's pressure (resident
    bytes / ``max_heap_size_bytes``) is at or above ``threshold``."""

    name: str
    threshold: float


@dataclass(frozen=True, slots=True)
class Overload:
    """Envoy's overload manager: resource monitors sampled every ``refresh_interval``, and the
    actions they trigger."""

    refresh_interval: float = 1.0
    # The fixed_heap monitor: the process's resident memory measured against this.
    max_heap_size_bytes: int | None = None
    # Downstream connections open at once over every listener (Envoy's
    # global_downstream_max_connections); None: sized from the process's file limit at start.
    max_active_downstream_connections: int | None = None
    actions: tuple[OverloadAction, ...] = ()


@dataclass(frozen=True, slots=True)
class MeshConfig:
    listeners: tuple[Listener, ...] = ()
    route_configs: tuple[RouteConfig, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    admin: Admin | None = None
    xds: Xds | None = None
    # Drain time on stop: requests in flight get this long to finish.
    drain_timeout: float = field(default=5.0)
    overload: Overload = Overload()
    # Processes serving the same listeners (the CLI's parent starts them; see workers.py).
    workers: int = 1
