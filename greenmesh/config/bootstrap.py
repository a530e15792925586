"""The YAML file -> MeshConfig: the top-level sections, then each resource through the same
converters xDS resources go through, then the cross-references between them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml

from greenmesh import model
from greenmesh.config.clusters import cluster
from greenmesh.config.listeners import listener
from greenmesh.config.overload import overload_manager
from greenmesh.config.reader import (
    INVALID,
    ConfigError,
    Invalid,
    Reader,
    address,
    duration,
    join,
    model_default,
    string,
    text,
)
from greenmesh.config.routes import route_config

if TYPE_CHECKING:
    from greenmesh.filters.registry import FilterRegistry

TOP_LEVEL = ("admin", "listeners", "route_configs", "clusters", "drain_timeout", "xds",
             "overload_manager", "workers")


def _xds(r: Reader, v: Any, path: str) -> model.Xds | None:
    obj = r.mapping(v, path, ("server", "node", "initial_fetch_timeout"))
    if obj is None:
        return None
    mark = r.mark()
    server = r.field(obj, path, "server", address)
    fetch = r.field(obj, path, "initial_fetch_timeout", duration,
                    model_default(model.Xds, "initial_fetch_timeout"))
    npath = join(path, "node")
    node_obj = r.mapping(obj.get("node"), npath, ("id", "cluster"))
    node = None
    if node_obj is not None:
        nid = r.field(node_obj, npath, "id", string)
        ncluster = r.field(node_obj, npath, "cluster", text, "")
        if nid is not None and ncluster is not None:
            node = model.XdsNode(nid, ncluster)
    if r.failed_since(mark) or server is None or fetch is None or node is None:
        return None
    return model.Xds(server, node, fetch)


def _workers(value: Any) -> int:
    """A number of processes, or ``auto``: one per CPU."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid("expected a positive whole number or auto")
    return value


def _admin(r: Reader, v: Any, path: str) -> model.Admin | None:
    a = r.mapping(v, path, ("address",))
    at = r.field(a, path, "address", address) if a is not None else None
    return model.Admin(at) if at is not None else None


def _unique(r: Reader, names: list[tuple[str, str | None]], what: str) -> None:
    seen: set[str] = set()
    for p, name in names:
        if name is not None:
            if name in seen:
                r.error(f"{p}.name", f"duplicate {what} name {name!r}")
            seen.add(name)


def _declared(value: Any) -> set[str]:
    """Names given in a section, even where the rest of an entry has errors: a broken cluster
    must not also make every route that names it an error."""
    if not isinstance(value, list):
        return set()
    return {v["name"] for v in value if isinstance(v, dict) and isinstance(v.get("name"), str)}


def load_dict(data: Any, protocols: Iterable[str] | None = None,
              filters: FilterRegistry | None = None) -> model.MeshConfig:
    """Builds a MeshConfig from parsed YAML, or raises ConfigError listing every problem.
    ``protocols``: the names a listener or cluster may use (default: the built-in registry's);
    ``filters``: the filter types a chain may use (default: those that ship, and entry points).
    """
    if protocols is None:
        from greenmesh.streams import default_registry
        protocols = default_registry().names()
    r = Reader(protocols, filters=filters)
    if data is None:
        data = {}
    obj = r.mapping(data, "", TOP_LEVEL)
    if obj is None:
        raise ConfigError(["config: expected a mapping at the top level"])
    admin = r.section(obj, "", "admin", _admin)
    xds = r.section(obj, "", "xds", _xds)
    drain = r.field(obj, "", "drain_timeout", duration,
                    model_default(model.MeshConfig, "drain_timeout"))
    overload = r.section(obj, "", "overload_manager", overload_manager)
    workers = r.field(obj, "", "workers", _workers, 1)

    listeners: list[model.Listener | None] = []
    inline: list[tuple[str, model.RouteConfig | None]] = []
    lpaths = r.items(obj, "", "listeners")
    for p, v in lpaths:
        built = listener(r, v, p)
        listeners.append(built[0] if built else None)
        if built and built[1] is not None:
            inline.append((p, built[1]))
    rpaths = r.items(obj, "", "route_configs")
    route_configs = [(p, route_config(r, v, p)) for p, v in rpaths] + inline
    cpaths = r.items(obj, "", "clusters")
    clusters = [cluster(r, v, p) for p, v in cpaths]
    _unique(r, [(p, lc.name if lc else None) for (p, _), lc in zip(lpaths, listeners,
                                                                     strict=True)], "listener")
    _unique(r, [(p, rc.name if rc else None) for p, rc in route_configs], "route config")
    _unique(r, [(p, c.name if c else None) for (p, _), c in zip(cpaths, clusters, strict=True)],
            "cluster")
    _check_references(r, obj, xds, listeners, [rc for _, rc in route_configs], clusters)
    _distinct_addresses(r, [(p, lc) for (p, _), lc in zip(lpaths, listeners, strict=True)])
    if r.errors:
        raise ConfigError(r.errors)
    assert drain is not None
    return model.MeshConfig(listeners=tuple(x for x in listeners if x),
                            route_configs=tuple(rc for _, rc in route_configs if rc),
                            clusters=tuple(c for c in clusters if c),
                            admin=admin if admin is not INVALID else None, drain_timeout=drain,
                            xds=xds if xds is not INVALID else None,
                            overload=overload or model.Overload(), workers=workers or 1)


_WILDCARDS = ("0.0.0.0", "::", "")


def _distinct_addresses(r: Reader, listeners: list[tuple[str, model.Listener | None]]) -> None:
    """Two listeners cannot bind one address (nor one port on a wildcard and on a host);
    port 0 (any free port) never clashes."""
    seen: list[tuple[str, model.Listener]] = []
    for path, lc in listeners:
        if lc is None or lc.address.port == 0:
            continue
        for other_path, other in seen:
            a, b = lc.address, other.address
            if a.port == b.port and (a.host == b.host or a.host in _WILDCARDS
                                     or b.host in _WILDCARDS):
                r.error(f"{path}.address", f"{a} is also the address of {other_path} "
                                           f"({other.name!r})")
                break
        seen.append((path, lc))


def _check_references(r: Reader, obj: dict, xds: model.Xds | None,
                      listeners: list[model.Listener | None],
                      route_configs: list[model.RouteConfig | None],
                      clusters: list[model.Cluster | None]) -> None:
    """Names that must exist. With a control plane, RDS and CDS may supply them later."""
    for i, c in enumerate(clusters):
        if c is not None and c.eds_service_name is not None and xds is None:
            r.error(f"clusters[{i}].type", "an EDS cluster needs a control plane (xds:)")
    if xds is not None:
        return
    route_names = {rc.name for rc in route_configs if rc} | _declared(obj.get("route_configs"))
    for i, lc in enumerate(listeners):
        if lc and lc.route_config not in route_names:
            r.error(f"listeners[{i}].route_config", f"unknown route config {lc.route_config!r}")
    cluster_names = {c.name for c in clusters if c} | _declared(obj.get("clusters"))
    for i, rc in enumerate(route_configs):
        for j, vh in enumerate(rc.virtual_hosts if rc else ()):
            for k, route in enumerate(vh.routes):
                action = route.route
                if action is None:
                    continue
                where = f"route_configs[{i}].virtual_hosts[{j}].routes[{k}].route"
                if action.cluster is not None and action.cluster not in cluster_names:
                    r.error(f"{where}.cluster", f"unknown cluster {action.cluster!r}")
                for n, wc in enumerate(action.weighted_clusters):
                    if wc.name not in cluster_names:
                        r.error(f"{where}.weighted_clusters.clusters[{n}].name",
                                f"unknown cluster {wc.name!r}")
                for n, mirror in enumerate(action.request_mirror_policies):
                    if mirror not in cluster_names:
                        r.error(f"{where}.request_mirror_policies[{n}].cluster",
                                f"unknown cluster {mirror!r}")


def load_text(text_: str, source: str = "config", protocols: Iterable[str] | None = None,
              filters: FilterRegistry | None = None) -> model.MeshConfig:
    try:
        data = yaml.load(text_, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError([f"{where}: invalid YAML: {getattr(e, 'problem', e)}"]) from None
    config = load_dict(data, protocols, filters)
    if not config.listeners and config.xds is None and not config.route_configs:
        raise ConfigError([f"{source}: nothing to serve: give listeners, an xds control plane, "
                           "or route_configs (for the in-process client)"])
    return config


def load_file(path: str, protocols: Iterable[str] | None = None,
              filters: FilterRegistry | None = None) -> model.MeshConfig:
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: {e.strerror}"]) from None
    return load_text(content, path, protocols, filters)
