"""Walking a config tree with key paths: every error names where it is
(``clusters[1].endpoints[0].address``, ``cluster 'dyn'.type``).

Errors are collected rather than raised at the first one, so a user fixes a config in one pass.
A ``strict`` reader (the YAML file) refuses unknown keys, like Envoy's strict parsing: a typo must
not silently become a default. A lenient one (resources from a control plane, which speak the whole
Envoy API) refuses only the fields that would change routing if ignored and records the others as
warnings: accepted, not honoured, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from greenmesh import model

if TYPE_CHECKING:
    from greenmesh.filters.registry import FilterRegistry

T = TypeVar("T")


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class Invalid(Exception):
    """One bad value; caught at the enclosing key and recorded with its path."""


INVALID: Any = ...  # what a builder returns for a section that is present but broken


def model_default(cls: type, name: str, missing: Any = None) -> Any:
    """The default a model dataclass gives a field (``missing`` if it has none): defaults live
    in the model only."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return missing if f.default is dataclasses.MISSING else f.default
    raise KeyError(name)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Reader:
    def __init__(self, protocols: Iterable[str], strict: bool = True,
                 filters: FilterRegistry | None = None) -> None:
        #: The protocol names the registry knows (a new codec needs no edit here).
        self.protocols = tuple(sorted(protocols))
        #: The filter types a listener's chain may name (and their config parsers).
        if filters is None:
            from greenmesh.filters.registry import FilterRegistry
            filters = FilterRegistry()
        self.filters = filters
        self.strict = strict
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def not_honoured(self, path: str, message: str) -> None:
        """Something greenmesh cannot do: an error in a file, a warning from a control plane."""
        if self.strict:
            self.error(path, message)
        else:
            self.warnings.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, keys: Iterable[str],
                refuse: Iterable[str] = ()) -> dict | None:
        """``value`` as a mapping whose keys are checked against what the caller reads."""
        if not isinstance(value, dict):
            self.error(path, "expected a mapping")
            return None
        keys = tuple(keys)
        for key in value:
            if key in keys:
                continue
            where = join(path, str(key))
            if self.strict:
                self.error(where, f"unknown key (expected one of {', '.join(keys)})")
            elif key in refuse:
                self.error(where, "not supported")
            else:
                self.warnings.append(f"{where}: not supported yet, ignored")
        return value

    def field(self, obj: dict, path: str, key: str, convert: Callable[[Any], T],
              default: Any = ...) -> T | None:
        """``obj[key]`` converted; ``default`` when absent (an error when there is none)."""
        p = join(path, key)
        if key not in obj or obj[key] is None:
            if default is ...:
                self.error(p, "required")
                return None
            return default
        try:
            return convert(obj[key])
        except Invalid as e:
            self.error(p, str(e))
            return None

    def items(self, obj: dict, path: str, key: str, required: bool = False
              ) -> list[tuple[str, Any]]:
        """The entries of a list under ``key``, each with its path."""
        p = join(path, key)
        value = obj.get(key)
        if value is None:
            if required:
                self.error(p, "required")
            return []
        if not isinstance(value, list):
            self.error(p, "expected a list")
            return []
        if required and not value:
            self.error(p, "expected at least one entry")
        return [(f"{p}[{i}]", v) for i, v in enumerate(value)]

    def section(self, obj: dict, path: str, key: str,
                build: Callable[[Reader, Any, str], T | None]) -> T | None:
        """A nested optional section: None when absent, INVALID when present but broken."""
        if obj.get(key) is None:
            return None
        built = build(self, obj[key], join(path, key))
        return INVALID if built is None else built

    def fields(self, obj: dict, path: str, cls: type,
               table: tuple[tuple[str, Callable[[Any], Any]], ...]) -> dict[str, Any]:
        """The scalar fields of ``table`` (key, converter), each read with its key path and,
        when absent, the model's own default (the one place defaults live)."""
        out = {}
        for key, convert in table:
            out[key] = self.field(obj, path, key, convert, model_default(cls, key, ...))
        return out

    def mark(self) -> int:
        """Where the errors are now: a builder returns None if ``failed_since(mark)``."""
        return len(self.errors)

    def failed_since(self, mark: int) -> bool:
        return len(self.errors) > mark


def own_settings(r: Reader, obj: dict, path: str, keys: tuple[str, ...],
                 from_metadata: tuple[str, ...]) -> dict[str, tuple[dict, str]]:
    """Where each of greenmesh's own settings of a resource is given, as (mapping, its path):
    the resource itself (the YAML's spelling, ``keys``) or, for those of ``from_metadata``, its
    ``metadata.filter_metadata.greenmesh`` (how a control plane says what Envoy has no field
    for). Given in both places is an error."""
    found = {key: (obj, path) for key in keys if key in obj}
    meta = obj.get("metadata")
    if meta is None:
        return found
    mpath = join(path, "metadata")
    m = r.mapping(meta, mpath, ("filter_metadata", "typed_filter_metadata"))
    fm = m.get("filter_metadata") if m is not None else None
    if not isinstance(fm, dict) or "greenmesh" not in fm:
        return found  # other filters' metadata: not greenmesh's to read
    gpath = join(join(mpath, "filter_metadata"), "greenmesh")
    for key in r.mapping(fm["greenmesh"], gpath, from_metadata) or ():
        if key in found:
            r.error(join(gpath, key), f"also given as {join(path, key)}")
        else:
            found[key] = (fm["greenmesh"], gpath)
    return found


# -- scalar converters ---------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(value: Any) -> float:
    """``15s``, ``250ms``, ``1.5s``, ``2m``, a number of seconds, or Envoy's JSON ``0.250s``."""
    if isinstance(value, bool):
        raise Invalid("expected a duration such as 15s or 250ms")
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float):
        if value < 0:
            raise Invalid("expected a non-negative duration")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise Invalid("expected a duration such as 15s or 250ms")


def optional_duration(value: Any) -> float | None:
    """A limit's duration, where 0 turns it off (Envoy's convention)."""
    return duration(value) or None


def port(value: Any) -> int:
    value = integer(value)
    if not 0 <= value <= 65535:
        raise Invalid("expected a port between 0 and 65535")
    return value


def address(value: Any) -> model.Address:
    """``host:port`` or ``[v6]:port``."""
    if not isinstance(value, str):
        raise Invalid("expected host:port")
    if value.startswith("["):
        host, sep, p = value[1:].partition("]:")
    else:
        host, sep, p = value.rpartition(":")
    if not sep or not host or not p.isdigit():
        raise Invalid("expected host:port")
    if int(p) > 65535:  # the Envoy form's words (a listener may also give 0: any free port)
        raise Invalid("expected a port between 1 and 65535")
    return model.Address(host, int(p))


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid("expected a non-empty string")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("expected a string")
    return value


def integer(value: Any) -> int:
    """An integer (Envoy's JSON writes 64-bit ones as strings of digits)."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("expected a whole number")
    return value


def positive(value: Any) -> int:
    try:
        value = integer(value)
    except Invalid:
        value = 0
    if value < 1:
        raise Invalid("expected a positive integer")
    return value


def count(value: Any) -> int:
    try:
        value = integer(value)
    except Invalid:
        value = -1
    if value < 0:
        raise Invalid("expected a whole number, 0 or more")
    return value


def percent(value: Any) -> int:
    value = count(value)
    if value > 100:
        raise Invalid("expected at most 100")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("expected true or false")
    return value


def one_of(choices: Iterable[str]) -> Callable[[Any], str]:
    choices = tuple(choices)

    def convert(value: Any) -> str:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}")
        return value
    return convert


def path_prefix(value: Any) -> str:
    value = string(value)
    if not value.startswith("/"):
        raise Invalid("expected a path starting with /")
    return value


def status(value: Any) -> int:
    try:
        value = integer(value)
    except Invalid:
        value = 0
    if not 200 <= value <= 599:
        raise Invalid("expected an HTTP status from 200 to 599")
    return value


def regex(value: Any) -> str:
    """A regular expression, or Envoy's ``{regex: ...}`` (google_re2 options are ignored)."""
    if isinstance(value, dict):
        value = value.get("regex")
    value = string(value)
    try:
        re.compile(value)
    except re.error as e:
        raise Invalid(f"invalid regex: {e}") from None
    return value


def readable_file(value: Any) -> str:
    value = string(value)
    try:
        with open(value, "rb"):
            pass
    except OSError as e:
        raise Invalid(f"cannot read {value}: {e.strerror}") from None
    return value


def typed(r: Reader, value: Any, path: str, type_suffix: str, keys: Iterable[str],
          refuse: Iterable[str] = ()) -> dict | None:
    """An Envoy ``typed_config`` (``{"@type": ..., fields}``) of the expected type."""
    obj = r.mapping(value, path, ("@type", *keys), refuse)
    if obj is None:
        return None
    kind = obj.get("@type")
    if not isinstance(kind, str) or not kind.endswith(type_suffix):
        r.error(join(path, "@type"), f"expected type.googleapis.com/...{type_suffix}")
        return None
    return obj
