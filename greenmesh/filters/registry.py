"""Filter types by name: the ones that ship, those a pip-installed package declares under the
``greenmesh.filters`` entry-point group, and those registered in code.

A filter's type is found as Envoy finds it: by its ``typed_config``'s type URL (for an
``xds.type.v3.TypedStruct``, the URL inside it), else by the entry's ``name``; the registry keys
are those URLs without ``type.googleapis.com/``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Final

from greenmesh.filters.api import Filter

ENTRY_POINT_GROUP: Final = "greenmesh.filters"
ROUTER_TYPES: Final = ("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router")


class FilterRegistry:
    def __init__(self, *, entry_points: bool = True) -> None:
        from greenmesh.filters.fault import FaultFilter
        from greenmesh.filters.header_to_metadata import HeaderToMetadata
        from greenmesh.filters.local_ratelimit import LocalRateLimit
        from greenmesh.filters.python import PythonFilter
        self._types: dict[str, type[Filter]] = {}
        for cls in (FaultFilter, LocalRateLimit, HeaderToMetadata, PythonFilter):
            for name in cls.type_names:
                self._types[name] = cls
        self._entry_points = entry_points
        # entry point -> its class, why it does not load, or None: no such entry point
        self._loaded: dict[str, type[Filter] | str | None] = {}

    def register(self, name: str, cls: type[Filter]) -> None:
        """Makes ``cls`` the filter type ``name`` (an embedding application's own filters)."""
        if not (isinstance(cls, type) and issubclass(cls, Filter)):
            raise TypeError(f"{cls!r} is not a greenmesh.filters.Filter subclass")
        self._types[name] = cls

    def get(self, kind: str) -> type[Filter] | str | None:
        """The filter class of type ``kind``; a string saying why an entry point that names it
        does not load; None when nothing is called that."""
        cls = self._types.get(kind)
        if cls is not None or not self._entry_points:
            return cls
        if kind not in self._loaded:
            self._loaded[kind] = _load_entry_point(kind)
        return self._loaded[kind]

    def names(self) -> list[str]:
        return sorted(self._types)

    @staticmethod
    def is_router(kind: str) -> bool:
        return kind in ROUTER_TYPES

    def create(self, kind: str, config: Any) -> Filter:
        """A filter instance of a type the config loader has already checked."""
        cls = self.get(kind)
        assert isinstance(cls, type), kind
        return cls.create(config)


def _load_entry_point(kind: str) -> type[Filter] | str | None:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    if not found:
        return None
    ep = found[0]
    try:
        cls = ep.load()
    except Exception as e:  # the installed package's own problem: said, not raised
        return f"entry point {ep.name} = {ep.value} does not load: {type(e).__name__}: {e}"
    if not (isinstance(cls, type) and issubclass(cls, Filter)):
        return f"entry point {ep.name} = {ep.value} is not a greenmesh.filters.Filter subclass"
    return cls
