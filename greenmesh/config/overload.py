"""Envoy's ``overload_manager`` bootstrap section -> model.Overload.

Two of Envoy's resource monitors: ``fixed_heap`` (here the process's resident memory, which is
what a Python process can measure) and ``global_downstream_max_connections``; and the actions a
proxy takes under memory pressure: stop accepting connections, end keep-alive, refuse requests.
"""

from __future__ import annotations

from typing import Any, Final

from greenmesh import model
from greenmesh.config.reader import Invalid, Reader, duration, join, model_default, positive

FIXED_HEAP: Final = "envoy.resource_monitors.fixed_heap"
CONNECTIONS: Final = "envoy.resource_monitors.global_downstream_max_connections"
STOP_ACCEPTING_CONNECTIONS: Final = "envoy.overload_actions.stop_accepting_connections"
DISABLE_HTTP_KEEPALIVE: Final = "envoy.overload_actions.disable_http_keepalive"
STOP_ACCEPTING_REQUESTS: Final = "envoy.overload_actions.stop_accepting_requests"
ACTIONS: Final = (STOP_ACCEPTING_CONNECTIONS, DISABLE_HTTP_KEEPALIVE, STOP_ACCEPTING_REQUESTS)
# Each monitor's typed_config: its type's name and its one field.
_MONITORS: Final = {
    FIXED_HEAP: ("fixed_heap.v3.FixedHeapConfig", "max_heap_size_bytes"),
    CONNECTIONS: ("downstream_connections.v3.DownstreamConnectionsConfig",
                  "max_active_downstream_connections"),
}


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise Invalid(f"expected a number in (0, 1], got {value!r}")
    return float(value)


def overload_manager(r: Reader, v: Any, path: str) -> model.Overload | None:
    obj = r.mapping(v, path, ("refresh_interval", "resource_monitors", "actions"))
    if obj is None:
        return None
    mark = r.mark()
    values: dict[str, Any] = {"refresh_interval": r.field(
        obj, path, "refresh_interval", duration, model_default(model.Overload, "refresh_interval"))}
    for p, m in r.items(obj, path, "resource_monitors"):
        mo = r.mapping(m, p, ("name", "typed_config"))
        if mo is None:
            continue
        name = mo.get("name")
        if name not in _MONITORS:
            r.error(join(p, "name"), f"expected one of {', '.join(_MONITORS)}")
            continue
        kind, key = _MONITORS[name]
        tpath = join(p, "typed_config")
        cfg = r.mapping(mo.get("typed_config"), tpath, ("@type", key))
        if cfg is None:
            continue
        if "@type" in cfg and not str(cfg["@type"]).endswith(kind):
            r.error(join(tpath, "@type"), f"expected type.googleapis.com/...{kind}")
        if key in values:
            r.error(join(p, "name"), f"{name} given twice")
        values[key] = r.field(cfg, tpath, key, positive)
    actions = []
    for p, a in r.items(obj, path, "actions"):
        ao = r.mapping(a, p, ("name", "triggers"))
        if ao is None:
            continue
        if ao.get("name") not in ACTIONS:
            r.error(join(p, "name"), f"expected one of {', '.join(ACTIONS)}")
        triggers = r.items(ao, p, "triggers", required=True)
        if len(triggers) > 1:
            r.error(join(p, "triggers"), "one trigger per action")
        for tp, t in triggers[:1]:
            to = r.mapping(t, tp, ("name", "threshold"), refuse=("scaled",))
            if to is None:
                continue
            if to.get("name") != FIXED_HEAP:
                r.error(join(tp, "name"), f"actions are triggered by {FIXED_HEAP} only")
            elif "max_heap_size_bytes" not in values:
                r.error(join(tp, "name"), f"{FIXED_HEAP} is not among the resource_monitors")
            th = r.mapping(to.get("threshold"), join(tp, "threshold"), ("value",))
            value = r.field(th, join(tp, "threshold"), "value", _fraction) if th else None
            if value is not None and isinstance(ao.get("name"), str):
                actions.append(model.OverloadAction(ao["name"], value))
    if r.failed_since(mark):
        return None
    return model.Overload(actions=tuple(actions), **values)
