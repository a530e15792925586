"""Envoy's header-to-metadata filter (``envoy.filters.http.header_to_metadata``): request
headers become dynamic metadata before routing (routes can match on it with
``match.dynamic_metadata``; the access log prints it), response headers on the way back.

It acts before the route is known, so it takes no per-route config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from greenmesh.config.reader import Reader, boolean, join, one_of, regex, string, text
from greenmesh.failures import LocalReply
from greenmesh.filters.api import Filter, FilterContext
from greenmesh.streams.base import RequestHead, ResponseHead

DEFAULT_NAMESPACE = "envoy.filters.http.header_to_metadata"


@dataclass(frozen=True, slots=True)
class KeyValue:
    namespace: str
    key: str
    value: str | None = None  # None: the header's own value
    number: bool = False  # Envoy's type NUMBER: stored as a float (skipped if not one)
    rewrite: tuple[str, str] | None = None  # regex_value_rewrite: (pattern, substitution)


@dataclass(frozen=True, slots=True)
class Rule:
    header: str
    on_present: KeyValue | None = None
    on_missing: KeyValue | None = None
    remove: bool = False


@dataclass(frozen=True, slots=True)
class MetadataConfig:
    request_rules: tuple[Rule, ...] = ()
    response_rules: tuple[Rule, ...] = ()


def _key_value(r: Reader, v: Any, path: str, missing: bool) -> KeyValue | None:
    obj = r.mapping(v, path, ("metadata_namespace", "key", "value", "type",
                              "regex_value_rewrite", "encode"))
    if obj is None:
        return None
    mark = r.mark()
    ns = r.field(obj, path, "metadata_namespace", text, "") or DEFAULT_NAMESPACE
    key = r.field(obj, path, "key", string)
    value = r.field(obj, path, "value", text, None)
    kind = r.field(obj, path, "type", one_of(("STRING", "NUMBER")), "STRING")
    r.field(obj, path, "encode", one_of(("NONE",)), "NONE")
    if missing and value is None:
        r.error(join(path, "value"), "required for on_header_missing")
    rewrite = None
    if obj.get("regex_value_rewrite") is not None:
        rp = join(path, "regex_value_rewrite")
        rw = r.mapping(obj["regex_value_rewrite"], rp, ("pattern", "substitution"))
        if rw is not None:
            pattern = r.field(rw, rp, "pattern", regex)
            sub = r.field(rw, rp, "substitution", text, "")
            if pattern is not None and sub is not None:
                rewrite = (pattern, sub)
    if r.failed_since(mark) or key is None:
        return None
    return KeyValue(ns, key, value, kind == "NUMBER", rewrite)


def _rules(r: Reader, obj: dict, path: str, key: str) -> tuple[Rule, ...]:
    out = []
    for p, v in r.items(obj, path, key):
        o = r.mapping(v, p, ("header", "on_header_present", "on_header_missing", "remove"),
                      refuse=("cookie",))
        if o is None:
            continue
        mark = r.mark()
        header = r.field(o, p, "header", string)
        present = r.section(o, p, "on_header_present",
                            lambda r_, v_, p_: _key_value(r_, v_, p_, False))
        missing = r.section(o, p, "on_header_missing",
                            lambda r_, v_, p_: _key_value(r_, v_, p_, True))
        remove = r.field(o, p, "remove", boolean, False)
        if present is None and missing is None and not remove:
            r.error(p, "expected on_header_present, on_header_missing or remove")
        if not r.failed_since(mark) and header is not None:
            out.append(Rule(header.lower(), present, missing, bool(remove)))
    return tuple(out)


def _value(kv: KeyValue, header_value: bytes) -> Any:
    value = kv.value if kv.value is not None else header_value.decode("latin-1")
    if kv.rewrite is not None:
        value = re.sub(kv.rewrite[0], kv.rewrite[1], value)
    if kv.number:
        try:
            return float(value)
        except ValueError:
            return None
    return value


def _apply(rules: tuple[Rule, ...], ctx: FilterContext, head: RequestHead | ResponseHead
           ) -> None:
    for rule in rules:
        name = rule.header.encode()
        found = head.get(name)
        kv = rule.on_present if found is not None else rule.on_missing
        if kv is not None:
            value = _value(kv, found or b"")
            if value is not None and value != "":
                ctx.set_metadata(kv.namespace, kv.key, value)
        if rule.remove and found is not None:
            head.remove(name)


class HeaderToMetadata(Filter):
    type_names: ClassVar = ("envoy.filters.http.header_to_metadata",
                            "envoy.extensions.filters.http.header_to_metadata.v3.Config")
    per_route: ClassVar = False

    @classmethod
    def parse(cls, r: Reader, v: Any, path: str) -> MetadataConfig | None:
        obj = r.mapping(v, path, ("@type", "request_rules", "response_rules"))
        if obj is None:
            return None
        mark = r.mark()
        config = MetadataConfig(_rules(r, obj, path, "request_rules"),
                                _rules(r, obj, path, "response_rules"))
        return None if r.failed_since(mark) else config

    def before_route(self, ctx: FilterContext) -> LocalReply | None:
        _apply(self.config.request_rules, ctx, ctx.request)
        return None

    def response_headers(self, ctx: FilterContext, head: ResponseHead) -> LocalReply | None:
        _apply(self.config.response_rules, ctx, head)
        return None
