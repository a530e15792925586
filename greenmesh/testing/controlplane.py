"""A real ADS server (grpcio, state of the world) for tests and by hand.

    python -m greenmesh.testing.controlplane --port 18000 --dir etc/xds

serves ``clusters.yaml``, ``endpoints.yaml``, ``listeners.yaml`` and ``routes.yaml`` from the
directory (lists of resources in Envoy's YAML/JSON form) and pushes them again when a file
changes. In tests, ``ControlPlane().set(type_url, [messages])`` pushes, and ``requests``
records every DiscoveryRequest (ACKs and NACKs) it received.

It runs on plain threads (grpcio's own server), not on gevent, so it is independent of the
greenmesh process it serves.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
import typing
from concurrent import futures
from pathlib import Path

import grpc
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    HttpConnectionManager,
)
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.protobuf import Any

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
FILES: dict[str, tuple[str, typing.Any]] = {
    "clusters.yaml": (CDS, Cluster), "endpoints.yaml": (EDS, ClusterLoadAssignment),
    "listeners.yaml": (LDS, Listener), "routes.yaml": (RDS, RouteConfiguration)}


def resource_name(msg) -> str:
    return getattr(msg, "cluster_name", "") or msg.name


class _Stream:
    def __init__(self, cp: ControlPlane):
        self.cp = cp
        self.out: queue.Queue = queue.Queue()
        self.names: dict[str, list[str] | None] = {}  # type -> names (None: wildcard)
        self.nonce = 0

    def send(self, type_url: str) -> None:
        with self.cp.lock:
            version, packed = self.cp.versions[type_url], self.cp.packed[type_url]
            names = self.names.get(type_url)
            chosen = [a for n, a in sorted(packed.items()) if names is None or n in names]
        self.nonce += 1
        self.out.put(DiscoveryResponse(version_info=str(version), type_url=type_url,
                                       nonce=str(self.nonce), resources=chosen))


class ControlPlane:
    def __init__(self, port: int = 0, address: str = "127.0.0.1", *, wait_for_set: bool = False):
        """``wait_for_set``: a type nothing was set for is not answered (as go-control-plane
        with no snapshot for the node), instead of with an empty version 0."""
        self.wait_for_set = wait_for_set
        self.lock = threading.Lock()
        self.resources: dict[str, dict[str, object]] = {t: {} for t in (CDS, EDS, LDS, RDS)}
        self.packed: dict[str, dict[str, Any]] = {t: {} for t in self.resources}
        self.versions = {t: 0 for t in self.resources}
        self.requests: list[DiscoveryRequest] = []
        self.request_times: list[float] = []  # time.monotonic() of each request's arrival
        self.push_times: dict[str, float] = {}  # type -> when its last version was sent
        self.streams: list[_Stream] = []
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._stream, request_deserializer=DiscoveryRequest.FromString,
                response_serializer=DiscoveryResponse.SerializeToString)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"{address}:{port}")
        self.server.start()

    def set(self, type_url: str, resources: list) -> int:
        """Replaces every resource of a type and pushes the new version to subscribers."""
        packed = {resource_name(r): Any.pack(r) for r in resources}  # once, not per stream
        with self.lock:
            self.resources[type_url] = {resource_name(r): r for r in resources}
        return self.set_packed(type_url, packed)

    def set_packed(self, type_url: str, packed: dict[str, Any]) -> int:
        """Pushes resources as they are given, packed (a test may send bytes that are not the
        type they claim to be)."""
        with self.lock:
            self.packed[type_url] = packed
            self.versions[type_url] += 1
            version = self.versions[type_url]
            streams = [s for s in self.streams if type_url in s.names]
            self.push_times[type_url] = time.monotonic()
        for s in streams:
            s.send(type_url)
        return version

    def ack_time(self, type_url: str, version: int) -> float | None:
        """When the ACK of that version arrived (time.monotonic()), if it did."""
        with self.lock:
            for req, t in zip(self.requests, self.request_times, strict=True):
                if (req.type_url == type_url and req.version_info == str(version)
                        and req.response_nonce and req.error_detail is None):
                    return t
        return None

    def acks(self, type_url: str) -> list[DiscoveryRequest]:
        with self.lock:
            return [r for r in self.requests if r.type_url == type_url and r.response_nonce
                    and r.error_detail is None]

    def nacks(self, type_url: str) -> list[DiscoveryRequest]:
        with self.lock:
            return [r for r in self.requests if r.type_url == type_url
                    and r.error_detail is not None]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        for s in list(self.streams):
            s.out.put(None)
        self.server.stop(0)

    def _stream(self, request_iterator, context):
        stream = _Stream(self)
        with self.lock:
            self.streams.append(stream)
        context.add_callback(lambda: stream.out.put(None))
        threading.Thread(target=self._read, args=(stream, request_iterator), daemon=True).start()
        try:
            while (response := stream.out.get()) is not None:
                yield response
        finally:
            with self.lock:
                if stream in self.streams:
                    self.streams.remove(stream)

    def _read(self, stream: _Stream, request_iterator) -> None:
        try:
            for req in request_iterator:
                with self.lock:
                    self.requests.append(req)
                    self.request_times.append(time.monotonic())
                names = None if req.type_url in (CDS, LDS) else sorted(req.resource_names)
                known = stream.names.get(req.type_url, "unset")
                stream.names[req.type_url] = names
                # Answer a first subscription, or one whose names changed; ACKs and NACKs
                # need no answer.
                if (not req.response_nonce or known != names) and not (
                        self.wait_for_set and not self.versions[req.type_url]):
                    stream.send(req.type_url)
        except grpc.RpcError:
            pass
        stream.out.put(None)


def _load_dir(cp: ControlPlane, d: Path, seen: dict[str, str]) -> None:
    """Pushes each file whose content changed (not its mtime: a second edit within the
    filesystem's timestamp granularity must not be missed)."""
    import yaml
    for filename, (type_url, cls) in FILES.items():
        path = d / filename
        if not path.exists():
            continue
        text = path.read_text()
        if seen.get(filename) == text:
            continue
        try:
            items = yaml.safe_load(text) or []
            resources = [cls.from_dict(item) for item in items]
        except Exception as e:  # half-written, or wrong: said, and tried again next time
            sys.stderr.write(f"{path}: {e}\n")
            continue
        seen[filename] = text
        cp.set(type_url, resources)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=18000)
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    cp = ControlPlane(args.port)
    seen: dict[str, str] = {}
    sys.stdout.write(f"control plane on 127.0.0.1:{cp.port}, serving {args.dir}\n")
    sys.stdout.flush()
    while True:
        _load_dir(cp, args.dir, seen)
        time.sleep(1)


if __name__ == "__main__":
    main()
