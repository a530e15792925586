"""``xds.type.v3.TypedStruct``: how a control plane configures an extension whose message it has
no proto for (a greenmesh filter: a type URL and a JSON-like value). envoy-data-plane does not
ship it; this is its two-field message. (Its older name, ``udpa.type.v1.TypedStruct``, is read
from the YAML file only: betterproto2 registers a class under one name.) Imported only by a
mesh with xDS."""

from __future__ import annotations

import betterproto2
from envoy_data_plane.google.protobuf import Struct
from envoy_data_plane.message_pool import default_message_pool
from pydantic.dataclasses import dataclass


@dataclass(eq=False, repr=False, config={"extra": "forbid"})
class TypedStruct(betterproto2.Message):
    type_url: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    value: Struct | None = betterproto2.field(2, betterproto2.TYPE_MESSAGE, optional=True)


default_message_pool.register_message("xds.type.v3", "TypedStruct", TypedStruct)
