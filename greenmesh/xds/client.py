"""The ADS client: one StreamAggregatedResources stream (Envoy's v3 API) over grpcio.

MOSN's shape with greenlets: a send greenlet owns every outgoing request (subscriptions, ACKs,
NACKs) and the per-type state they carry (version, nonce, resource names); the receive
greenlet reads responses and dispatches them by type URL to registered handlers, which
convert the resources and update the mesh, then report ACK or NACK back to the sender.

State of the world: CDS and LDS are wildcard subscriptions; EDS follows the EDS clusters and RDS
the route names the listeners reference. A resource that fails to convert NACKs the whole
response (previous version, the nonce, an error_detail naming resource and field) and the old
config keeps serving. Resources are decoded into Envoy's JSON form and go through the same
converters as the YAML file (``greenmesh.config``). Only the resources' own problems are NACKed
as such; a bug in greenmesh is logged as one and counted, and the NACK says it was greenmesh's.

When the control plane goes away greenmesh keeps serving what it has, reconnects with
exponential backoff and jitter, and resubscribes with the versions and names it knows.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import gevent
import gevent.event
import gevent.queue
import grpc

from greenmesh import model
from greenmesh.config.clusters import cluster, load_assignment
from greenmesh.config.listeners import listener
from greenmesh.config.reader import Reader
from greenmesh.config.routes import route_config
from greenmesh.cooperate import Slicer
from greenmesh.logger import get_logger
from greenmesh.xds import fast
from greenmesh.xds.resources import (
    CDS,
    EDS,
    KINDS,
    LDS,
    RDS,
    DecodeError,
    ResourceError,
    decode,
    load_message_types,
    name_of,
)

if TYPE_CHECKING:
    from greenmesh.mesh import Mesh

log = get_logger("greenmesh.xds")

# Envoy's short names of each type, for stats (xds.cds.update_success...).
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds"}
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
MAX_BACKOFF = 30.0


def _messages():
    load_message_types()
    from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
    from envoy_data_plane.google.rpc import Status
    return DiscoveryRequest, DiscoveryResponse, Status


def _version_gauge(version: str) -> int:
    """A version as a number for the stats: itself when it is one, else a hash of it (as
    Envoy's ``version`` gauges); the text is in /config_dump."""
    if version.isdigit() and len(version) < 16:
        return int(version)
    return int.from_bytes(hashlib.sha1(version.encode()).digest()[:6], "big")


class _TypeState:
    __slots__ = ("version", "nonce", "names", "wildcard")

    def __init__(self, wildcard: bool):
        self.version = ""
        self.nonce = ""
        self.names: set[str] = set()
        self.wildcard = wildcard


class Dynamic(NamedTuple):
    """What the control plane has given, as /config_dump shows it."""

    clusters: list[model.Cluster]
    listeners: list[model.Listener]
    routes: list[tuple[model.RouteConfig, bool]]  # (config, inline in its listener)
    endpoints: list[tuple[str, tuple[model.Endpoint, ...]]]


class XdsClient:
    def __init__(self, cfg: model.Xds, mesh: Mesh):
        self.cfg = cfg
        self.mesh = mesh
        self.handlers: dict[str, Callable[[list[Any]], None]] = {}
        self.state: dict[str, _TypeState] = {}
        self.register(CDS, self._on_clusters, wildcard=True)
        self.register(EDS, self._on_endpoints)
        self.register(LDS, self._on_listeners, wildcard=True)
        self.register(RDS, self._on_routes)
        self._outbox: gevent.queue.Queue = gevent.queue.Queue()
        self._main: gevent.Greenlet | None = None
        self._stopped = False
        self._call: Any = None
        # What the control plane gave, kept to rebuild the mesh's dynamic part.
        self._clusters: dict[str, model.Cluster] = {}
        self._endpoints: dict[str, tuple[model.Endpoint, ...]] = {}
        self._warm_expired: set[str] = set()
        self._listeners: list[model.Listener] = []
        self._inline_routes: dict[str, model.RouteConfig] = {}
        self._rds_routes: dict[str, model.RouteConfig] = {}
        self._routes_expired: set[str] = set()
        self._listener_rds: set[str] = set()  # the route configs the listeners name
        self._client_rds: set[str] = set()  # those the in-process client uses (not awaited)
        self.responses = 0
        # type -> (version, wall-clock time) of the last update applied (for /config_dump).
        self.applied: dict[str, tuple[str, float]] = {}
        self._answered: set[str] = set()  # types the control plane has answered (ACK or NACK)
        # Envoy's init manager: set once the first fetch of everything subscribed is done, or
        # initial_fetch_timeout passed; /ready says PRE_INITIALIZING until then.
        self.initialized = gevent.event.Event()
        self._init_timer: gevent.Greenlet | None = None

    def register(self, type_url: str, handler: Callable[[list[Any]], None],
                 wildcard: bool = False) -> None:
        """Like MOSN's RegisterTypeURLHandleFunc: responses of this type go to ``handler``."""
        self.handlers[type_url] = handler
        self.state[type_url] = _TypeState(wildcard)

    def start(self) -> None:
        import grpc.experimental.gevent as grpc_gevent
        grpc_gevent.init_gevent()  # before any channel, or grpcio deadlocks under gevent
        self._messages = _messages()
        fast.prepare()
        self._main = gevent.spawn(self._run)
        self._init_timer = gevent.spawn_later(self.cfg.initial_fetch_timeout, self._init_timeout)

    def stop(self) -> None:
        self._stopped = True
        if self._init_timer is not None:
            self._init_timer.kill(block=False)
        if self._call is not None:
            self._call.cancel()
        if self._main is not None:
            self._main.kill(block=True, timeout=2)

    # -- the stream ---------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.25
        while not self._stopped:
            got = self.responses
            try:
                self._session()
            except Exception:  # never let a control-plane problem end the loop
                log.exception("xds_session_failed")
            if self._stopped:
                return
            if self.responses > got:
                backoff = 0.25
            delay = backoff * random.uniform(0.5, 1.5)
            log.info("xds_reconnecting", server=str(self.cfg.server), in_seconds=round(delay, 2))
            gevent.sleep(delay)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _session(self) -> None:
        request_cls, response_cls, _ = self._messages
        channel = grpc.insecure_channel(f"{self.cfg.server.host}:{self.cfg.server.port}")
        requests: gevent.queue.Queue = gevent.queue.Queue()
        # Per stream: what a failed stream left unsent (subscriptions, ACKs with its nonces)
        # dies with it instead of being replayed on the next one.
        outbox: gevent.queue.Queue = gevent.queue.Queue()
        self._outbox = outbox
        call = channel.stream_stream(METHOD, request_serializer=request_cls.SerializeToString,
                                     response_deserializer=response_cls.FromString)(
            iter(requests.get, None))
        self._call = call
        sender = gevent.spawn(self._send_loop, outbox, requests)
        try:
            for type_url, st in self.state.items():
                if st.wildcard or st.names:
                    st.nonce = ""  # a new stream: nonces of the old one mean nothing
                    self._outbox.put(("subscribe", type_url))
            for response in call:  # this greenlet is the receive greenlet
                self.responses += 1
                self._dispatch(response)
        except grpc.RpcError as e:
            log.warning("xds_stream_ended", code=e.code().name if e.code() else None,
                        details=e.details() if hasattr(e, "details") else str(e))
        finally:
            sender.kill()
            requests.put(None)
            call.cancel()
            channel.close()
            self._call = None

    def _send_loop(self, outbox: gevent.queue.Queue, requests: gevent.queue.Queue) -> None:
        """Owns all outgoing requests of one stream: builds each from the per-type state. A
        subscription that would repeat the last request of its type is not sent: one per type
        per stream, each answered with the whole state of the world."""
        request_cls, _, status_cls = self._messages
        node = self._node()
        sent: dict[str, tuple] = {}  # type -> (version, nonce, names) of its last request
        while True:
            kind, type_url, *rest = outbox.get()
            st = self.state[type_url]
            error = None
            if kind == "ack":
                st.version, st.nonce = rest
            elif kind == "nack":
                st.nonce, error = rest  # the version stays the last accepted one
            said = (st.version, st.nonce, frozenset(st.names))
            if kind == "subscribe" and sent.get(type_url) == said:
                continue
            sent[type_url] = said
            requests.put(request_cls(
                node=node, type_url=type_url, version_info=st.version, response_nonce=st.nonce,
                resource_names=[] if st.wildcard else sorted(st.names),
                error_detail=status_cls(code=3, message=error) if error else None))

    def _node(self):
        from envoy_data_plane.envoy.config.core.v3 import Node
        return Node(id=self.cfg.node.id, cluster=self.cfg.node.cluster,
                    user_agent_name="greenmesh")

    def _dispatch(self, response) -> None:
        type_url = response.type_url
        handler = self.handlers.get(type_url)
        if handler is None:
            log.warning("xds_unknown_type", type_url=type_url)
            return
        try:
            resources = list(response.resources)  # Any: each handler decodes its own way
            handler(resources)
        except ResourceError as e:  # the control plane's: refused, the old config serves
            detail = str(e)
        except Exception as e:
            # greenmesh's own bug: said so, counted, and NACKed (nothing was applied) without
            # blaming the resources; the stream stays (a bug must not become a reconnect loop).
            log.exception("xds_internal_error", type_url=type_url,
                          version=response.version_info)
            self.mesh.stats.inc("xds.internal_errors")
            detail = (f"greenmesh internal error applying these resources ({type(e).__name__}); "
                      "not a problem of the resources: see greenmesh's log")
        else:
            stats = self.mesh.stats
            stats.inc("xds.ack")
            kind = SHORT.get(type_url, "other")
            stats.inc(f"xds.{kind}.update_success")
            stats.set(f"xds.{kind}.version", _version_gauge(response.version_info))
            self.applied[type_url] = (response.version_info, time.time())
            log.info("xds_ack", type_url=type_url.rsplit(".", 1)[1],
                     version=response.version_info, resources=len(resources))
            self._outbox.put(("ack", type_url, response.version_info, response.nonce))
            self._answered.add(type_url)
            self._check_initialized()
            return
        log.warning("xds_nack", type_url=type_url, version=response.version_info, error=detail)
        self.mesh.stats.inc("xds.nack")
        self.mesh.stats.inc(f"xds.{SHORT.get(type_url, 'other')}.update_rejected")
        self._outbox.put(("nack", type_url, response.nonce, detail))
        self._answered.add(type_url)
        self._check_initialized()

    @property
    def connected(self) -> bool:
        return self._call is not None

    def dynamic(self) -> Dynamic:
        return Dynamic(list(self._clusters.values()), list(self._listeners),
                       [(rc, False) for rc in self._rds_routes.values()]
                       + [(rc, True) for rc in self._inline_routes.values()],
                       sorted(self._endpoints.items()))

    # -- initialisation (Envoy's init manager) ------------------------------------------------
    def pending(self) -> list[str]:
        """What the first fetch still waits for: a type never answered, an EDS cluster's
        endpoints, a listener's routes."""
        out = [SHORT[t] for t in (CDS, LDS) if t not in self._answered]
        out += [f"eds:{s}" for s in sorted(self.state[EDS].names)
                if s not in self._endpoints and s not in self._warm_expired]
        out += [f"rds:{n}" for n in sorted(self._listener_rds)
                if n not in self._rds_routes and n not in self._routes_expired]
        return out

    def _check_initialized(self) -> None:
        if not self.initialized.is_set() and not self.pending():
            log.info("xds_initialized", versions={SHORT[t]: v for t, (v, _) in
                                                  self.applied.items()})
            self.initialized.set()

    def _init_timeout(self) -> None:
        if not self.initialized.is_set():
            log.warning("xds_initial_fetch_timeout", waiting_for=self.pending(),
                        timeout=self.cfg.initial_fetch_timeout)
            self.initialized.set()

    def _convert(self, type_url: str, resources: list, build: Callable[[Reader, Any, str], Any]
                 ) -> list[tuple[str, Any]]:
        """(name, model) of every resource, decoded and converted with the config converters;
        raises ResourceError with every problem found, after logging what is not honoured."""
        r = Reader(self.mesh.registry.names(), strict=False, filters=self.mesh.filters)
        kind = KINDS[type_url]
        out = []
        for i, a in enumerate(resources):
            try:
                d = decode(a)
            except DecodeError as e:
                r.error(f"{kind} [{i}]", str(e))
                continue
            name = name_of(d)
            where = f"{kind} {name!r}" if name else f"{kind} [{i}]"
            built = build(r, d, where)
            if built is None and not r.errors:
                r.error(where, "could not be converted")
            out.append((name, built))
        for w in r.warnings:
            log.warning("xds_not_honoured", detail=w)
            self.mesh.stats.inc("xds.warnings")
        if r.errors:
            raise ResourceError(r.errors)
        return out

    def want_routes(self, names: set[str]) -> None:
        """The route configs the in-process client calls through (``outbound``...): asked for
        beside the listeners' ones, but not waited for by /ready (a control plane that has no
        such route config must not hold every mesh back for its initial fetch timeout)."""
        self._client_rds = set(names)
        self._subscribe(RDS, self._listener_rds | self._client_rds)

    def _subscribe(self, type_url: str, names: set[str]) -> None:
        st = self.state[type_url]
        if names != st.names:
            st.names = names
            self._outbox.put(("subscribe", type_url))

    # -- handlers --------------------------------------------------------------------------
    def _on_clusters(self, resources: list) -> None:
        clusters = {c.name: c for _, c in self._convert(CDS, resources, cluster)}
        self._clusters = clusters
        eds = {c.eds_service_name for c in clusters.values() if c.eds_service_name}
        for name in eds - set(self._endpoints) - self._warm_expired:
            gevent.spawn_later(self.cfg.initial_fetch_timeout, self._warm_timeout, name)
        self._subscribe(EDS, eds)
        self._apply_clusters()

    def _warm_timeout(self, service: str) -> None:
        if service not in self._endpoints:
            log.warning("xds_cluster_warming_timed_out", service=service)
            self._warm_expired.add(service)
            self._apply_clusters()
            self._check_initialized()

    def _on_endpoints(self, resources: list) -> None:
        update = {}
        slow = []
        slicer = Slicer()
        for a in resources:
            quick = fast.load_assignment(a.value, pause=slicer.tick)
            if quick is None:  # it sets more than the fast path reads: the full conversion
                slow.append(a)
            else:
                update[quick[0]] = quick[1]
        if slow:
            update.update(self._convert(EDS, slow, load_assignment))
        self._endpoints.update(update)
        self._apply_clusters()

    def _apply_clusters(self) -> None:
        """Clusters ready to serve: static ones, and EDS ones once their endpoints are known
        (or their initial fetch timed out): a warming cluster does not take traffic."""
        import dataclasses
        ready = []
        for c in self._clusters.values():
            if c.eds_service_name is None:
                ready.append(c)
            elif c.eds_service_name in self._endpoints:
                ready.append(dataclasses.replace(c, endpoints=self._endpoints[c.eds_service_name]))
            elif c.eds_service_name in self._warm_expired:
                ready.append(c)
        started = time.monotonic()
        self.mesh.apply_dynamic(clusters=ready)
        log.debug("xds_clusters_applied", clusters=len(ready),
                  ms=round((time.monotonic() - started) * 1000, 1))

    def _on_listeners(self, resources: list) -> None:
        pairs = [built for _, built in self._convert(LDS, resources, listener)]
        self._listeners = [lst for lst, _ in pairs]
        self._inline_routes = {rc.name: rc for _, rc in pairs if rc is not None}
        rds = {lst.route_config for lst, rc in pairs if rc is None}
        for name in rds - set(self._rds_routes) - self._routes_expired:
            gevent.spawn_later(self.cfg.initial_fetch_timeout, self._routes_timeout, name)
        self._listener_rds = rds
        self._subscribe(RDS, rds | self._client_rds)
        self.mesh.apply_dynamic(route_configs=[*self._rds_routes.values(),
                                               *self._inline_routes.values()],
                                listeners=self._warm_listeners())

    def _on_routes(self, resources: list) -> None:
        self._rds_routes = {rc.name: rc for _, rc in self._convert(RDS, resources, route_config)}
        self.mesh.apply_dynamic(route_configs=[*self._rds_routes.values(),
                                               *self._inline_routes.values()],
                                listeners=self._warm_listeners())

    def _routes_timeout(self, name: str) -> None:
        if name not in self._rds_routes:
            log.warning("xds_listener_warming_timed_out", route_config=name)
            self._routes_expired.add(name)
            self.mesh.apply_dynamic(listeners=self._warm_listeners())
            self._check_initialized()

    def _warm_listeners(self) -> list[model.Listener]:
        """Listeners whose routes are known (or whose wait for them timed out), as Envoy's
        listener warming: one still waiting keeps its previous version serving, if it had one."""
        known = set(self._rds_routes) | set(self._inline_routes) | self._routes_expired
        active = self.mesh.listeners
        out = []
        for lst in self._listeners:
            if lst.route_config in known:
                out.append(lst)
            elif lst.name in active:
                out.append(active[lst.name].config)
        return out
