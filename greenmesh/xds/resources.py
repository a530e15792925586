"""A control plane's resources -> Envoy's JSON form (snake_case field names, durations as
``"1.5s"``, enums by name, typed configs with ``@type``): the same shape the YAML file uses,
so the same converters in ``greenmesh.config`` read both.

A resource that does not decode (bytes that are not its type, or a typed config of a type
greenmesh does not know) is the control plane's problem, reported as one in the NACK.
"""

from __future__ import annotations

import importlib
from typing import Any

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#: What each type's resources are called in error messages (Envoy's message names).
KINDS = {CDS: "cluster", EDS: "cluster_load_assignment", LDS: "listener",
         RDS: "route_configuration"}


class ResourceError(Exception):
    """Resources greenmesh refuses: one ``where: why`` line each, the NACK's error detail."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class DecodeError(Exception):
    """A resource that is not what its type URL says."""


def load_message_types() -> None:
    """Registers the resource types and the types they carry inside ``Any`` fields.
    envoy-data-plane is heavy to import (~0.5 s): only a mesh with xDS pays for it."""
    from envoy_data_plane.envoy.config.cluster import v3 as _cluster  # noqa: F401
    from envoy_data_plane.envoy.config.endpoint import v3 as _endpoint  # noqa: F401
    from envoy_data_plane.envoy.config.listener import v3 as _listener  # noqa: F401
    from envoy_data_plane.envoy.config.route import v3 as _route  # noqa: F401
    from envoy_data_plane.envoy.extensions.filters.http.fault import v3 as _fault  # noqa: F401
    from envoy_data_plane.envoy.extensions.filters.http.header_to_metadata import (  # noqa: F401
        v3 as _h2m,
    )
    from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit import (  # noqa: F401
        v3 as _rl,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router import v3 as _router  # noqa: F401
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import (  # noqa: F401,E501
        v3 as _hcm,
    )
    from envoy_data_plane.envoy.extensions.transport_sockets.tls import v3 as _tls  # noqa: F401
    from envoy_data_plane.envoy.extensions.upstreams.http import v3 as _http  # noqa: F401

    from greenmesh.xds import typed_struct  # noqa: F401


_UNREGISTERED = "Can't unpack unregistered type: type.googleapis.com/"


def _load_type_of(error: str) -> bool:
    """Imports the envoy-data-plane module of a type an ``Any`` named but nothing had loaded
    (a filter greenmesh does not run may still come, ``is_optional``); True if it did."""
    at = error.find(_UNREGISTERED)
    if at < 0:
        return False
    name = error[at + len(_UNREGISTERED):].split()[0].strip("'\".,")
    package = name.rpartition(".")[0]
    if not package.replace(".", "").replace("_", "").isalnum():
        return False
    try:
        importlib.import_module(f"envoy_data_plane.{package}")
    except ImportError:
        return False
    return True


def decode(resource: Any) -> dict[str, Any]:
    """A resource (an ``Any``) in Envoy's JSON form."""
    for _ in range(8):  # each round may import the module of one more type it names
        try:
            return json_form(resource.unpack())
        except DecodeError as e:
            if not _load_type_of(str(e)):
                raise
        except Exception as e:  # bad bytes or an unknown type: what the control plane sent
            if not _load_type_of(str(e)):
                raise DecodeError(f"does not decode as {resource.type_url}: {e}") from None
    raise DecodeError(f"does not decode as {resource.type_url}: too many unknown types")


def _proto_name(field: str) -> str:
    return field


def json_form(message: Any) -> dict[str, Any]:
    """An envoy-data-plane message in Envoy's JSON form, with the proto's own field names
    (betterproto2's SNAKE casing would rebuild them from camelCase: ``consecutive_5_xx``)."""
    try:
        return message.to_dict(casing=_proto_name)
    except TypeError as e:  # a typed config inside whose type greenmesh does not know
        raise DecodeError(str(e)) from None


def name_of(resource: dict[str, Any]) -> str:
    return str(resource.get("name") or resource.get("cluster_name") or "")
