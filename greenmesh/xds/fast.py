"""A fast path for the biggest xDS payload, EDS.

envoy-data-plane (betterproto2 + pydantic) takes about a second to parse a ClusterLoadAssignment
of 10,000 endpoints; the protobuf runtime (upb, in C, already installed with grpc) takes a few
milliseconds. envoy-data-plane ships no descriptors, so a schema for just the messages EDS uses
is generated here from envoy-data-plane's own field metadata (numbers and types are read, not
copied by hand). Fields greenmesh does not read are declared as opaque bytes/varints, so it can
tell that they are set: the fast path then returns None and the full path decides, with its
warnings and refusals (``greenmesh.config.clusters.load_assignment``). The result is the same
endpoints the full path converts; tests compare the two.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from greenmesh import model
from greenmesh.config.clusters import SKIPPED_HEALTH

_PACKAGE = "greenmesh.eds_subset"
_LENGTH_DELIMITED = ("string", "bytes", "message", "map")

# message -> {field: (submessage, repeated)} for the fields the fast path descends into.
_SHAPE = {
    "ClusterLoadAssignment": {"endpoints": ("LocalityLbEndpoints", True)},
    "LocalityLbEndpoints": {"lb_endpoints": ("LbEndpoint", True)},
    "LbEndpoint": {"endpoint": ("Endpoint", False), "load_balancing_weight": ("UInt32Value", False)},
    "Endpoint": {"address": ("Address", False)},
    "Address": {"socket_address": ("SocketAddress", False)},
    "SocketAddress": {},
    "UInt32Value": {},
}
# What the fast path reads; any other field set means: take the full path.
_READ = {
    "ClusterLoadAssignment": {"cluster_name", "endpoints"},
    "LocalityLbEndpoints": {"lb_endpoints"},
    "LbEndpoint": {"endpoint", "health_status", "load_balancing_weight"},
    "Endpoint": {"address"},
    "Address": {"socket_address"},
    "SocketAddress": {"address", "port_value"},
}


@functools.cache
def _skipped_health() -> frozenset[int]:
    """The health statuses the converters skip, as the numbers on the wire."""
    from envoy_data_plane.envoy.config.core.v3 import HealthStatus
    return frozenset(HealthStatus[name].value for name in SKIPPED_HEALTH)


def _classes() -> dict[str, type]:
    from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    return {"ClusterLoadAssignment": ClusterLoadAssignment,
            "LocalityLbEndpoints": LocalityLbEndpoints, "LbEndpoint": LbEndpoint,
            "Endpoint": Endpoint, "Address": Address, "SocketAddress": SocketAddress}


@functools.cache
def _cla_class() -> Any:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="greenmesh_eds_subset.proto",
                                             package=_PACKAGE, syntax="proto3")
    wrapper = fdp.message_type.add(name="UInt32Value")
    wrapper.field.add(name="value", number=1, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    for name, cls in _classes().items():
        msg = fdp.message_type.add(name=name)
        descend = _SHAPE[name]
        for f in dataclasses.fields(cls):
            meta = f.metadata.get("betterproto")
            if meta is None:
                continue
            field = msg.field.add(name=f.name, number=meta.number, label=F.LABEL_OPTIONAL)
            if f.name in descend:
                sub, repeated = descend[f.name]
                field.type = F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{sub}"
                if repeated:
                    field.label = F.LABEL_REPEATED
            elif str(meta.proto_type) == "string" and f.name in _READ.get(name, ()):
                field.type = F.TYPE_STRING
            elif str(meta.proto_type) in _LENGTH_DELIMITED:
                field.type = F.TYPE_BYTES  # not read: only seen to be set
            else:
                field.type = F.TYPE_UINT64  # varints (enums, bools, integers)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{_PACKAGE}.ClusterLoadAssignment"))


def prepare() -> None:
    """Builds the schema now (about 0.1 s) rather than at the first EDS push."""
    _cla_class()
    _skipped_health()


def _only(msg, name: str) -> bool:
    return all(f.name in _READ[name] for f, _ in msg.ListFields())


def load_assignment(raw: bytes, pause: Callable[[], None] = lambda: None
                    ) -> tuple[str, tuple[model.Endpoint, ...]] | None:
    """(cluster name, endpoints) of an encoded ClusterLoadAssignment, or None when it sets
    anything beyond addresses, weights and health (the full path handles that). ``pause`` is
    called for every endpoint (a Slicer's tick), so traffic is not stalled meanwhile."""
    try:
        cla = _cla_class().FromString(raw)
    except DecodeError:  # the full path says what is wrong with it, as the control plane's error
        return None
    # A field on the wire in another shape than the schema's is kept as unknown, and
    # ListFields() would not show it: anything dropped here shrinks the message, so the full
    # path takes it (as it does a non-canonical encoding, which is merely slower).
    cla.DiscardUnknownFields()
    if cla.ByteSize() != len(raw):
        return None
    if not _only(cla, "ClusterLoadAssignment"):
        return None
    out: list[model.Endpoint] = []
    append = out.append
    skipped = _skipped_health()
    Endpoint, Address = model.Endpoint, model.Address
    for locality in cla.endpoints:
        if not _only(locality, "LocalityLbEndpoints"):
            return None
        for lb in locality.lb_endpoints:
            pause()
            if not _only(lb, "LbEndpoint"):
                return None
            if lb.health_status in skipped:
                continue
            ep = lb.endpoint
            address = ep.address
            sa = address.socket_address
            if not (_only(ep, "Endpoint") and _only(address, "Address")
                    and _only(sa, "SocketAddress")) or not sa.address or not sa.port_value:
                return None
            append(Endpoint(Address(sa.address, sa.port_value),
                            lb.load_balancing_weight.value or 1))
    return cla.cluster_name, tuple(out)
