"""Stream filters in config: a listener's ``http_filters`` (Envoy's HCM list) and a route's
``typed_per_filter_config``, for the YAML file and xDS alike.

An entry names its type Envoy's way (``typed_config`` with an ``@type``, or an
``xds.type.v3.TypedStruct`` carrying a ``type_url`` and a ``value``) or greenmesh's shorter way
(``type``, else ``name``, is the type; ``config`` its settings). The type's own ``parse`` (the
filters that ship) or ``validate`` (user filters) checks its config here, with key paths, before
any traffic. A type nobody registered is refused unless the entry is ``is_optional``, as Envoy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greenmesh import model
from greenmesh.config.reader import Invalid, Reader, boolean, join, string

if TYPE_CHECKING:
    from greenmesh.filters.api import Filter

TYPED_STRUCTS = ("xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct")
FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def type_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _kind(r: Reader, name: str | None, typed: Any, tpath: str, config: Any, path: str
          ) -> tuple[str, Any, str] | None:
    """(type, its settings, their path) of an entry, from its typed config (at ``tpath``) or
    its name."""
    if typed is not None:
        if not isinstance(typed, dict) or not isinstance(typed.get("@type"), str):
            r.error(tpath, "expected a mapping with an @type")
            return None
        kind = type_name(typed["@type"])
        if kind in TYPED_STRUCTS:
            ts = r.mapping(typed, tpath, ("@type", "type_url", "value"))
            inner = r.field(ts, tpath, "type_url", string) if ts is not None else None
            if inner is None:
                return None
            return type_name(inner), typed.get("value") or {}, join(tpath, "value")
        return kind, typed, tpath
    if name is None:
        return None
    return name, config, join(path, "config")


def _settings(r: Reader, cls: type[Filter], value: Any, path: str) -> Any:
    """The config a filter type makes of its settings; None (with errors) if it refuses them."""
    parse = getattr(cls, "parse", None)
    if parse is not None:
        return parse(r, value, path)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        r.error(path, "expected a mapping")
        return None
    try:
        cls.validate(value)
    except (ValueError, TypeError) as e:
        r.error(path, str(e))
        return None
    return value


def http_filters(r: Reader, obj: dict, path: str) -> tuple[model.HttpFilter, ...] | None:
    """The chain before the router. The router may be listed (Envoy's HCM must list it); then
    it comes last."""
    out: list[model.HttpFilter] = []
    mark = r.mark()
    names: set[str] = set()
    router_at = None
    for p, f in r.items(obj, path, "http_filters"):
        if router_at is not None:
            r.error(router_at, "the router must be the last filter")
            router_at = None
        built = http_filter(r, f, p)
        if built is None:
            continue
        if r.filters.is_router(built.kind):
            router_at = p
            continue
        if built.name in names:
            r.error(join(p, "name"), f"filter name {built.name!r} used twice")
        names.add(built.name)
        out.append(built)
    return None if r.failed_since(mark) else tuple(out)


def http_filter(r: Reader, v: Any, path: str) -> model.HttpFilter | None:
    obj = r.mapping(v, path, ("name", "type", "typed_config", "config", "is_optional"),
                    refuse=("disabled", "config_discovery"))
    if obj is None:
        return None
    mark = r.mark()
    name = r.field(obj, path, "name", string)
    optional = r.field(obj, path, "is_optional", boolean, False)
    if obj.get("typed_config") is not None and (obj.get("config") is not None or
                                                obj.get("type") is not None):
        r.error(path, "give typed_config, or type/config, not both")
        return None
    kind = r.field(obj, path, "type", string, name)
    found = _kind(r, kind, obj.get("typed_config"), join(path, "typed_config"),
                  obj.get("config"), path)
    if r.failed_since(mark) or found is None or name is None:
        return None
    kind, value, vpath = found
    if r.filters.is_router(kind):
        return model.HttpFilter(name, kind)
    cls = _filter_type(r, kind, path, bool(optional))
    if cls is None:
        return None
    config = _settings(r, cls, value, vpath)
    if r.failed_since(mark):
        return None
    return model.HttpFilter(name, kind, config)


def _filter_type(r: Reader, kind: str, path: str, optional: bool) -> type[Filter] | None:
    cls = r.filters.get(kind)
    if isinstance(cls, str):
        r.error(path, cls)
        return None
    if cls is None:
        if optional:
            r.warnings.append(f"{path}: filter type {kind!r} is unknown; skipped (is_optional)")
        else:
            r.error(path, f"unknown filter type {kind!r} (known: "
                          f"{', '.join(r.filters.names())}, or an installed entry point)")
        return None
    return cls


def filter_overrides(r: Reader, obj: dict, path: str
                     ) -> tuple[tuple[str, model.FilterOverride], ...] | None:
    """Envoy's ``typed_per_filter_config``: by filter name, a ``FilterConfig`` (``disabled``,
    or a ``config`` of the filter's type), the filter's own per-route config, or greenmesh's
    ``{disabled: true}`` / ``{config: ...}``."""
    value = obj.get("typed_per_filter_config")
    if value is None:
        return ()
    path = join(path, "typed_per_filter_config")
    if not isinstance(value, dict):
        r.error(path, "expected a mapping of filter name to config")
        return None
    mark = r.mark()
    out: list[tuple[str, model.FilterOverride]] = []
    for name, v in value.items():
        p = join(path, str(name))
        override = _override(r, str(name), v, p)
        if override is not None:
            out.append((str(name), override))
    return None if r.failed_since(mark) else tuple(out)


def _override(r: Reader, name: str, v: Any, path: str) -> model.FilterOverride | None:
    if not isinstance(v, dict):
        r.error(path, "expected a mapping")
        return None
    optional = False
    typed = v if "@type" in v else None
    tpath = path
    config = None
    if typed is None or type_name(str(typed["@type"])) == FILTER_CONFIG:
        fc = r.mapping(v, path, ("@type", "type", "config", "disabled", "is_optional"))
        if fc is None:
            return None
        if r.field(fc, path, "disabled", boolean, False):
            return model.FilterOverride(disabled=True)
        optional = bool(r.field(fc, path, "is_optional", boolean, False))
        if fc.get("config") is None:
            r.error(path, "expected disabled: true or a config")
            return None
        if isinstance(fc["config"], dict) and "@type" in fc["config"]:
            typed, tpath = fc["config"], join(path, "config")
        else:
            typed, config = None, fc["config"]
            name = r.field(fc, path, "type", string, name) or name
    mark = r.mark()
    found = _kind(r, name, typed, tpath, config, path)
    if found is None:
        return None
    kind, value, vpath = found
    cls = _filter_type(r, kind, path, optional)
    if cls is None:
        return None
    if not getattr(cls, "per_route", True):
        r.error(path, f"filter type {kind!r} takes no per-route config (only disabled: true)")
        return None
    parsed = _settings(r, cls, value, vpath)
    return None if r.failed_since(mark) else model.FilterOverride(kind=kind, config=parsed)


def fractional_percent(r: Reader, obj: dict, path: str, key: str,
                       default: float = 0.0) -> float | None:
    """Envoy's FractionalPercent (``numerator``, ``denominator`` HUNDRED by default) as a
    fraction of 1; ``default`` when absent (Envoy's default is 0: nothing)."""
    v = obj.get(key)
    if v is None:
        return default
    p = join(path, key)
    fp = r.mapping(v, p, ("numerator", "denominator"))
    if fp is None:
        return None
    num = r.field(fp, p, "numerator", _count, 0)
    den = r.field(fp, p, "denominator", _denominator, 100)
    if num is None or den is None:
        return None
    return min(num / den, 1.0)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or \
            not str(value).isdigit():
        raise Invalid("expected a whole number, 0 or more")
    return int(value)


def _denominator(value: Any) -> int:
    if value not in _DENOMINATORS:
        raise Invalid(f"expected one of {', '.join(_DENOMINATORS)}")
    return _DENOMINATORS[value]
