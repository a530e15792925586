"""YAML -> model, with every error naming its key path (``clusters[1].endpoints[0].address``).

Errors are collected rather than raised at the first one, so a user fixes a config in one pass.
Unknown keys are errors, like Envoy's strict parsing: a typo must not silently become a default.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from greenmesh import model

T = TypeVar("T")

PROTOCOLS = ("http1", "http2", "bolt")
LISTENER_PROTOCOLS = (*PROTOCOLS, "auto")
LB_POLICIES = ("round_robin", "random", "least_request", "ring_hash", "maglev")


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class _Invalid(Exception):
    """One bad value; caught at the enclosing key and recorded with its path."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``15s``, ``250ms``, ``1.5s``, ``2m`` or a number of seconds."""
    if isinstance(value, bool):
        raise _Invalid("expected a duration such as 15s or 250ms")
    if isinstance(value, int | float):
        if value < 0:
            raise _Invalid("expected a non-negative duration")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise _Invalid("expected a duration such as 15s or 250ms")


def parse_address(value: Any) -> model.Address:
    """``host:port`` or ``[v6]:port``."""
    if not isinstance(value, str):
        raise _Invalid("expected host:port")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _Invalid("expected host:port")
    return model.Address(host, int(port))


class _Reader:
    """Walks the YAML tree, remembering where it is so errors can say so."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict | None:
        if not isinstance(value, dict):
            self.error(path, "expected a mapping")
            return None
        for key in value:
            if key not in allowed:
                self.error(_join(path, str(key)), f"unknown key (expected one of {', '.join(allowed)})")
        return value

    def field(self, obj: dict, path: str, key: str, convert: Callable[[Any], T],
              default: Any = ..., ) -> T | None:
        p = _join(path, key)
        if key not in obj or obj[key] is None:
            if default is ...:
                self.error(p, "required")
                return None
            return default
        try:
            return convert(obj[key])
        except _Invalid as e:
            self.error(p, str(e))
            return None

    def items(self, obj: dict, path: str, key: str, required: bool = False) -> list[tuple[str, Any]]:
        p = _join(path, key)
        value = obj.get(key)
        if value is None:
            if required:
                self.error(p, "required")
            return []
        if not isinstance(value, list):
            self.error(p, "expected a list")
            return []
        return [(f"{p}[{i}]", v) for i, v in enumerate(value)]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("expected a non-empty string")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid("expected a positive integer")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid("expected a whole number, 0 or more")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}")
        return value
    return convert


def _path_prefix(value: Any) -> str:
    value = _string(value)
    if not value.startswith("/"):
        raise _Invalid("expected a path starting with /")
    return value


def _readable_file(value: Any) -> str:
    value = _string(value)
    try:
        with open(value, "rb"):
            pass
    except OSError as e:
        raise _Invalid(f"cannot read {value}: {e.strerror}") from None
    return value


def _tls_server(r: _Reader, v: Any, path: str) -> model.TlsServer | None:
    obj = r.mapping(v, path, ("certificate_chain", "private_key"))
    if obj is None:
        return None
    chain = r.field(obj, path, "certificate_chain", _readable_file)
    key = r.field(obj, path, "private_key", _readable_file)
    if chain is None or key is None:
        return None
    try:  # the stdlib context, only to check that the pair loads
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(chain, key)
    except (ssl.SSLError, OSError) as e:
        r.error(path, f"certificate and key do not load: {e}")
        return None
    return model.TlsServer(chain, key)


def _tls_client(r: _Reader, v: Any, path: str) -> model.TlsClient | None:
    obj = r.mapping(v, path, ("sni", "ca"))
    if obj is None:
        return None
    sni = r.field(obj, path, "sni", _string, "")
    ca = r.field(obj, path, "ca", _readable_file, "")
    return None if sni is None or ca is None else model.TlsClient(sni, ca)


def _optional(r: _Reader, obj: dict, path: str, key: str, build) -> Any:
    """A nested optional section: None when absent, ... when present but invalid."""
    if obj.get(key) is None:
        return None
    built = build(r, obj[key], _join(path, key))
    return ... if built is None else built


def _xds(r: _Reader, v: Any, path: str) -> model.Xds | None:
    obj = r.mapping(v, path, ("server", "node", "initial_fetch_timeout"))
    if obj is None:
        return None
    server = r.field(obj, path, "server", parse_address)
    fetch = r.field(obj, path, "initial_fetch_timeout", parse_duration, 5.0)
    npath = _join(path, "node")
    node_obj = r.mapping(obj.get("node"), npath, ("id", "cluster"))
    node = None
    if node_obj is not None:
        nid = r.field(node_obj, npath, "id", _string)
        ncluster = r.field(node_obj, npath, "cluster", _string, "")
        if nid is not None and ncluster is not None:
            node = model.XdsNode(nid, ncluster)
    if server is None or fetch is None or node is None:
        return None
    return model.Xds(server, node, fetch)


def _scalars(r: _Reader, obj: dict, path: str, cls: type, table: tuple) -> dict[str, Any]:
    """The fields of a table (name, converter): each read with its key path, the model's
    default when absent; required ones (no default in the model) reported when missing."""
    d = cls.__dataclass_fields__
    out = {}
    for key, convert in table:
        default = d[key].default
        out[key] = r.field(obj, path, key, convert,
                           ... if default is dataclasses.MISSING else default)
    return out


_LISTENER_FIELDS = (
    ("name", _string), ("address", parse_address), ("route_config", _string),
    ("protocol", _one_of(LISTENER_PROTOCOLS)), ("max_connections", _positive_int),
    ("max_request_headers_kb", _positive_int), ("idle_timeout", parse_duration),
    ("access_log", _boolean))


def _listener(r: _Reader, v: Any, path: str) -> model.Listener | None:
    obj = r.mapping(v, path, (*(k for k, _ in _LISTENER_FIELDS), "tls"))
    if obj is None:
        return None
    values = _scalars(r, obj, path, model.Listener, _LISTENER_FIELDS)
    tls = _optional(r, obj, path, "tls", _tls_server)
    if None in values.values() or tls is ...:
        return None
    return model.Listener(tls=tls, **values)


_STRING_MATCHERS = ("exact", "prefix", "suffix", "safe_regex")
_LEGACY_MATCHERS = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                    "safe_regex_match": "safe_regex"}


def _regex(value: Any) -> str:
    if isinstance(value, dict):  # Envoy's {regex: ...} (google_re2 options are ignored)
        value = value.get("regex")
    value = _string(value)
    try:
        re.compile(value)
    except re.error as e:
        raise _Invalid(f"invalid regex: {e}") from None
    return value


def _string_kinds(r: _Reader, obj: dict, path: str) -> dict[str, Any] | None:
    """The string matcher of a header or query-parameter matcher (v3 and legacy spellings)."""
    kinds: dict[str, Any] = {}
    if obj.get("string_match") is not None:
        spath = _join(path, "string_match")
        sm = r.mapping(obj["string_match"], spath, _STRING_MATCHERS)
        for kind in _STRING_MATCHERS if sm is not None else ():
            if sm.get(kind) is not None:
                kinds[kind] = r.field(sm, spath, kind, _regex if kind == "safe_regex" else str)
    for legacy, kind in _LEGACY_MATCHERS.items():
        if obj.get(legacy) is not None:
            kinds[kind] = r.field(obj, path, legacy, _regex if kind == "safe_regex" else str)
    if len(kinds) > 1:
        r.error(path, "expected one matcher (string_match with one of exact, prefix, suffix, "
                      "safe_regex; or a legacy *_match key)")
        return None
    return None if None in kinds.values() else kinds


def _header_matcher(r: _Reader, v: Any, path: str) -> model.HeaderMatcher | None:
    obj = r.mapping(v, path, ("name", "string_match", "present_match", "invert_match",
                              *_LEGACY_MATCHERS))
    if obj is None:
        return None
    name = r.field(obj, path, "name", _string)
    invert = r.field(obj, path, "invert_match", _boolean, False)
    present = r.field(obj, path, "present_match", _boolean, True)
    kinds = _string_kinds(r, obj, path)
    if name is None or invert is None or present is None or kinds is None:
        return None
    return model.HeaderMatcher(name=name.lower(), exact=kinds.get("exact"),
                               prefix=kinds.get("prefix"), suffix=kinds.get("suffix"),
                               regex=kinds.get("safe_regex"), present=present, invert=invert)


def _query_matcher(r: _Reader, v: Any, path: str) -> model.QueryParameterMatcher | None:
    obj = r.mapping(v, path, ("name", "string_match", "present_match"))
    if obj is None:
        return None
    name = r.field(obj, path, "name", _string)
    present = r.field(obj, path, "present_match", _boolean, True)
    kinds = _string_kinds(r, obj, path)
    if name is None or present is None or kinds is None:
        return None
    return model.QueryParameterMatcher(name=name, exact=kinds.get("exact"),
                                       prefix=kinds.get("prefix"), suffix=kinds.get("suffix"),
                                       regex=kinds.get("safe_regex"), present=present)


_APPEND_ACTIONS = {"APPEND_IF_EXISTS_OR_ADD": True, "OVERWRITE_IF_EXISTS_OR_ADD": False,
                   "ADD_IF_ABSENT": True}


def _header_ops(r: _Reader, obj: dict, path: str) -> model.HeaderOps | None:
    ok = True

    def adds(key: str) -> tuple[model.HeaderValueOption, ...]:
        nonlocal ok
        out = []
        for p, item in r.items(obj, path, key):
            o = r.mapping(item, p, ("header", "append", "append_action"))
            h = r.mapping(o.get("header") if o else None, _join(p, "header"), ("key", "value"))
            if o is None or h is None:
                ok = False
                continue
            hk = r.field(h, _join(p, "header"), "key", _string)
            hv = r.field(h, _join(p, "header"), "value", str, "")
            append = r.field(o, p, "append", _boolean, None)
            action = r.field(o, p, "append_action", _one_of(tuple(_APPEND_ACTIONS)), None)
            if hk is None or hv is None:
                ok = False
                continue
            if append is None:
                append = _APPEND_ACTIONS[action] if action else True
            out.append(model.HeaderValueOption(hk.lower(), hv, append))
        return tuple(out)

    def removes(key: str) -> tuple[str, ...]:
        nonlocal ok
        out = []
        for p, item in r.items(obj, path, key):
            try:
                out.append(_string(item).lower())
            except _Invalid as e:
                r.error(p, str(e))
                ok = False
        return tuple(out)
    ops = model.HeaderOps(adds("request_headers_to_add"), removes("request_headers_to_remove"),
                          adds("response_headers_to_add"), removes("response_headers_to_remove"))
    return ops if ok else None


_HEADER_OP_KEYS = ("request_headers_to_add", "request_headers_to_remove",
                   "response_headers_to_add", "response_headers_to_remove")
_REDIRECT_CODES = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303,
                   "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise _Invalid("expected an HTTP status from 200 to 599")
    return value


def _match(r: _Reader, v: Any, path: str) -> model.RouteMatch | None:
    m = r.mapping(v, path, ("prefix", "path", "safe_regex", "path_separated_prefix",
                            "case_sensitive", "headers", "query_parameters"))
    if m is None:
        return None
    prefix = r.field(m, path, "prefix", _path_prefix, None)
    exact = r.field(m, path, "path", _path_prefix, None)
    regex = r.field(m, path, "safe_regex", _regex, None)
    separated = r.field(m, path, "path_separated_prefix", _path_prefix, None)
    case = r.field(m, path, "case_sensitive", _boolean, True)
    headers = [_header_matcher(r, h, p) for p, h in r.items(m, path, "headers")]
    queries = [_query_matcher(r, q, p) for p, q in r.items(m, path, "query_parameters")]
    given = [k for k in ("prefix", "path", "safe_regex", "path_separated_prefix") if k in m]
    if len(given) > 1:
        r.error(path, "expected at most one of prefix, path, safe_regex, path_separated_prefix")
        return None
    if not given and not headers and not queries:
        r.error(path, "expected one of prefix, path, safe_regex, path_separated_prefix, "
                      "or headers")
        return None
    if separated is not None and separated.endswith("/") and separated != "/":
        r.error(_join(path, "path_separated_prefix"), "must not end with /")
        return None
    if None in headers or None in queries or case is None or (given and (
            prefix, exact, regex, separated) == (None, None, None, None)):
        return None
    return model.RouteMatch(prefix=prefix, path=exact, safe_regex=regex,
                            path_separated_prefix=separated, case_sensitive=case,
                            headers=tuple(headers), query_parameters=tuple(queries))


def _retry_on(value: Any) -> tuple[str, ...]:
    items = [x.strip() for x in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or any(x not in model.RETRY_ON for x in items):
        raise _Invalid(f"expected a comma-separated list of {', '.join(model.RETRY_ON)}")
    return tuple(items)


def _retry_policy(r: _Reader, v: Any, path: str) -> model.RetryPolicy | None:
    obj = r.mapping(v, path, ("retry_on", "num_retries", "per_try_timeout",
                              "retriable_status_codes", "retry_back_off"))
    if obj is None:
        return None
    retry_on = r.field(obj, path, "retry_on", _retry_on)
    num = r.field(obj, path, "num_retries", _count, 1)
    per_try = r.field(obj, path, "per_try_timeout", parse_duration, None)
    codes = []
    for p, c in r.items(obj, path, "retriable_status_codes"):
        try:
            codes.append(_status(c))
        except _Invalid as e:
            r.error(p, str(e))
    base, top = 0.025, None
    if obj.get("retry_back_off") is not None:
        bpath = _join(path, "retry_back_off")
        b = r.mapping(obj["retry_back_off"], bpath, ("base_interval", "max_interval"))
        if b is not None:
            base = r.field(b, bpath, "base_interval", parse_duration)
            top = r.field(b, bpath, "max_interval", parse_duration, None)
    if retry_on is None or num is None or base is None or len(codes) != len(
            obj.get("retriable_status_codes") or []):
        return None
    return model.RetryPolicy(retry_on, num, per_try or None, tuple(codes), base, top)


def _hash_policy(r: _Reader, v: Any, path: str) -> model.HashPolicy | None:
    obj = r.mapping(v, path, ("header", "cookie", "connection_properties", "terminal"))
    if obj is None:
        return None
    if len([k for k in ("header", "cookie", "connection_properties") if k in obj]) != 1:
        r.error(path, "expected one of header, cookie, connection_properties")
        return None
    if "header" in obj:
        h = r.mapping(obj["header"], _join(path, "header"), ("header_name",))
        name = r.field(h, _join(path, "header"), "header_name", _string) if h else None
        return model.HashPolicy(header=name.lower()) if name else None
    if "cookie" in obj:
        c = r.mapping(obj["cookie"], _join(path, "cookie"), ("name", "ttl", "path"))
        name = r.field(c, _join(path, "cookie"), "name", _string) if c else None
        return model.HashPolicy(cookie=name) if name else None
    cp = r.mapping(obj["connection_properties"], _join(path, "connection_properties"),
                   ("source_ip",))
    if cp is None or r.field(cp, _join(path, "connection_properties"), "source_ip",
                             _boolean) is not True:
        r.error(_join(path, "connection_properties.source_ip"), "expected true")
        return None
    return model.HashPolicy(source_ip=True)


def _action(r: _Reader, v: Any, path: str) -> model.RouteAction | None:
    a = r.mapping(v, path, ("cluster", "weighted_clusters", "cluster_header", "timeout",
                            "prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
                            "auto_host_rewrite", "retry_policy", "hash_policy",
                            "request_mirror_policies", "idle_timeout"))
    if a is None:
        return None
    cluster = r.field(a, path, "cluster", _string, None)
    header = r.field(a, path, "cluster_header", _string, None)
    weighted: list[model.WeightedCluster] = []
    if a.get("weighted_clusters") is not None:
        wpath = _join(path, "weighted_clusters")
        w = r.mapping(a["weighted_clusters"], wpath, ("clusters", "total_weight"))
        for p, c in r.items(w or {}, wpath, "clusters", required=True):
            co = r.mapping(c, p, ("name", "weight"))
            name = r.field(co, p, "name", _string) if co else None
            weight = r.field(co, p, "weight", _count) if co else None
            if name is not None and weight is not None:
                weighted.append(model.WeightedCluster(name, weight))
        if weighted and not any(c.weight for c in weighted):
            r.error(wpath, "the weights add up to 0")
    chosen = [k for k in ("cluster", "weighted_clusters", "cluster_header") if k in a]
    if len(chosen) != 1:
        r.error(path, "expected exactly one of cluster, weighted_clusters, cluster_header")
        return None
    regex_rewrite = None
    if a.get("regex_rewrite") is not None:
        rpath = _join(path, "regex_rewrite")
        rr = r.mapping(a["regex_rewrite"], rpath, ("pattern", "substitution"))
        if rr is not None:
            pattern = r.field(rr, rpath, "pattern", _regex)
            sub = r.field(rr, rpath, "substitution", str, "")
            if pattern is not None and sub is not None:
                regex_rewrite = (pattern, sub)
    timeout = r.field(a, path, "timeout", parse_duration, 15.0)
    idle = r.field(a, path, "idle_timeout", parse_duration, 0.0)
    retry = _optional(r, a, path, "retry_policy", _retry_policy)
    hashes = [_hash_policy(r, h, p) for p, h in r.items(a, path, "hash_policy")]
    mirrors = []
    for p, m in r.items(a, path, "request_mirror_policies"):
        mo = r.mapping(m, p, ("cluster",))
        mirror = r.field(mo, p, "cluster", _string) if mo is not None else None
        if mirror is not None:
            mirrors.append(mirror)
    prefix_rewrite = r.field(a, path, "prefix_rewrite", str, None)
    host = r.field(a, path, "host_rewrite_literal", _string, None)
    auto = r.field(a, path, "auto_host_rewrite", _boolean, False)
    if (timeout is None or idle is None or auto is None
            or (cluster is None and header is None and not weighted)
            or ("regex_rewrite" in a and regex_rewrite is None) or retry is ...
            or None in hashes or len(mirrors) != len(a.get("request_mirror_policies") or [])):
        return None
    return model.RouteAction(cluster=cluster, timeout=timeout, weighted_clusters=tuple(weighted),
                             cluster_header=header.lower() if header else None,
                             prefix_rewrite=prefix_rewrite, regex_rewrite=regex_rewrite,
                             host_rewrite_literal=host, auto_host_rewrite=auto,
                             retry_policy=retry, hash_policy=tuple(hashes),
                             request_mirror_policies=tuple(mirrors), idle_timeout=idle)


def _direct(r: _Reader, v: Any, path: str) -> model.DirectResponse | None:
    d = r.mapping(v, path, ("status", "body"))
    if d is None:
        return None
    status = r.field(d, path, "status", _status)
    body = d.get("body", "")
    if isinstance(body, dict):  # Envoy's DataSource
        body = body.get("inline_string", "")
    if not isinstance(body, str):
        r.error(_join(path, "body"), "expected a string or {inline_string: ...}")
        return None
    return None if status is None else model.DirectResponse(status, body)


def _redirect(r: _Reader, v: Any, path: str) -> model.Redirect | None:
    d = r.mapping(v, path, ("scheme_redirect", "https_redirect", "host_redirect",
                            "port_redirect", "path_redirect", "prefix_rewrite", "response_code",
                            "strip_query"))
    if d is None:
        return None
    code = d.get("response_code", 301)
    code = _REDIRECT_CODES.get(code, code) if isinstance(code, str) else code
    if code not in (301, 302, 303, 307, 308):
        r.error(_join(path, "response_code"), "expected 301, 302, 303, 307 or 308 (or "
                                              "Envoy's names, e.g. MOVED_PERMANENTLY)")
        return None
    scheme = r.field(d, path, "scheme_redirect", _one_of(("http", "https")), None)
    if r.field(d, path, "https_redirect", _boolean, False):
        scheme = "https"
    port = r.field(d, path, "port_redirect", _positive_int, None)
    values = dict(host_redirect=r.field(d, path, "host_redirect", _string, None),
                  path_redirect=r.field(d, path, "path_redirect", _path_prefix, None),
                  prefix_rewrite=r.field(d, path, "prefix_rewrite", str, None),
                  strip_query=r.field(d, path, "strip_query", _boolean, False))
    if values["strip_query"] is None:
        return None
    return model.Redirect(scheme_redirect=scheme, port_redirect=port, response_code=code,
                          **values)


def _route(r: _Reader, v: Any, path: str) -> model.Route | None:
    obj = r.mapping(v, path, ("name", "match", "route", "direct_response", "redirect",
                              *_HEADER_OP_KEYS))
    if obj is None:
        return None
    match = _match(r, obj.get("match"), _join(path, "match"))
    kinds = [k for k in ("route", "direct_response", "redirect") if obj.get(k) is not None]
    if len(kinds) != 1:
        r.error(path, "expected exactly one of route, direct_response, redirect")
        return None
    built = {"route": _action, "direct_response": _direct, "redirect": _redirect}[kinds[0]](
        r, obj[kinds[0]], _join(path, kinds[0]))
    name = r.field(obj, path, "name", _string, "")
    ops = _header_ops(r, obj, path)
    if match is None or built is None or name is None or ops is None:
        return None
    return model.Route(match=match, name=name, headers=ops, **{kinds[0]: built})


def _domain(value: Any) -> str:
    value = _string(value).lower()
    if "*" in value and value != "*" and not (value.count("*") == 1 and (
            value.startswith("*") or value.endswith("*"))):
        raise _Invalid("expected an exact domain, *.suffix, prefix.* or *")
    return value


def _virtual_host(r: _Reader, v: Any, path: str) -> model.VirtualHost | None:
    obj = r.mapping(v, path, ("name", "domains", "routes", *_HEADER_OP_KEYS))
    if obj is None:
        return None
    name = r.field(obj, path, "name", _string)
    ops = _header_ops(r, obj, path)
    domains = []
    for p, d in r.items(obj, path, "domains", required=True):
        try:
            domains.append(_domain(d))
        except _Invalid as e:
            r.error(p, str(e))
    routes = [_route(r, rv, p) for p, rv in r.items(obj, path, "routes", required=True)]
    if name is None or None in routes or not domains or ops is None:
        return None
    return model.VirtualHost(name=name, domains=tuple(domains), routes=tuple(routes),
                             headers=ops)


def _route_config(r: _Reader, v: Any, path: str) -> model.RouteConfig | None:
    obj = r.mapping(v, path, ("name", "virtual_hosts", *_HEADER_OP_KEYS))
    if obj is None:
        return None
    name = r.field(obj, path, "name", _string)
    ops = _header_ops(r, obj, path)
    vhosts = [_virtual_host(r, x, p) for p, x in r.items(obj, path, "virtual_hosts", required=True)]
    if name is None or None in vhosts or ops is None:
        return None
    seen: dict[str, str] = {}
    for vh, (p, _) in zip(vhosts, r.items(obj, path, "virtual_hosts"), strict=True):
        for i, d in enumerate(vh.domains):
            if d in seen:
                r.error(f"{p}.domains[{i}]", f"domain {d!r} already used by virtual host {seen[d]!r}")
            seen[d] = vh.name
    return model.RouteConfig(name=name, virtual_hosts=tuple(vhosts), headers=ops)


def _endpoint(r: _Reader, v: Any, path: str) -> model.Endpoint | None:
    if isinstance(v, str):  # shorthand: just "host:port"
        v = {"address": v}
    obj = r.mapping(v, path, ("address", "weight", "priority"))
    if obj is None:
        return None
    address = r.field(obj, path, "address", parse_address)
    weight = r.field(obj, path, "weight", _positive_int, 1)
    priority = r.field(obj, path, "priority", _count, 0)
    if address is None or weight is None or priority is None:
        return None
    if address.port == 0:
        r.error(_join(path, "address"), "expected a port between 1 and 65535")
        return None
    return model.Endpoint(address=address, weight=weight, priority=priority)


_CLUSTER_FIELDS = (
    ("name", _string), ("protocol", _one_of(PROTOCOLS)), ("lb_policy", _one_of(LB_POLICIES)),
    ("connect_timeout", parse_duration), ("idle_timeout", parse_duration),
    ("max_concurrent_streams", _positive_int), ("keepalive_interval", parse_duration))
_BREAKER_FIELDS = (("max_connections", _positive_int), ("max_pending_requests", _count),
                   ("max_requests", _positive_int), ("max_retries", _count))


def _cluster(r: _Reader, v: Any, path: str) -> model.Cluster | None:
    obj = r.mapping(v, path, (*(k for k, _ in _CLUSTER_FIELDS), *(k for k, _ in _BREAKER_FIELDS),
                              "endpoints", "tls", "outlier_detection", "health_checks"))
    if obj is None:
        return None
    endpoints = [_endpoint(r, e, p) for p, e in r.items(obj, path, "endpoints")]
    values = _scalars(r, obj, path, model.Cluster, _CLUSTER_FIELDS)
    limits = _scalars(r, obj, path, model.CircuitBreakers, _BREAKER_FIELDS)
    tls = _optional(r, obj, path, "tls", _tls_client)
    outlier = _optional(r, obj, path, "outlier_detection", _outlier)
    checks = [_health_check(r, h, p) for p, h in r.items(obj, path, "health_checks")]
    if len(checks) > 1:
        r.error(_join(path, "health_checks"), "expected at most one health check")
    if (None in values.values() or None in limits.values() or None in endpoints or tls is ...
            or outlier is ... or None in checks):
        return None
    return model.Cluster(endpoints=tuple(endpoints), tls=tls, outlier_detection=outlier,
                         circuit_breakers=model.CircuitBreakers(**limits),
                         health_check=checks[0] if checks else None, **values)


def _health_check(r: _Reader, v: Any, path: str) -> model.HealthCheck | None:
    obj = r.mapping(v, path, ("timeout", "interval", "healthy_threshold", "unhealthy_threshold",
                              "http_health_check", "tcp_health_check"))
    if obj is None:
        return None
    if ("http_health_check" in obj) == ("tcp_health_check" in obj):
        r.error(path, "expected one of http_health_check, tcp_health_check")
        return None
    http_path, statuses = None, ((200, 201),)
    if "http_health_check" in obj:
        hpath = _join(path, "http_health_check")
        h = r.mapping(obj["http_health_check"] or {}, hpath, ("path", "expected_statuses"))
        if h is None:
            return None
        http_path = r.field(h, hpath, "path", _path_prefix)
        ranges = []
        for p, item in r.items(h, hpath, "expected_statuses"):
            rng = r.mapping(item, p, ("start", "end"))
            start = r.field(rng, p, "start", _status) if rng else None
            end = r.field(rng, p, "end", int) if rng else None
            if start is not None and end is not None:
                ranges.append((start, end))
        if ranges:
            statuses = tuple(ranges)
        if http_path is None:
            return None
    d = model.HealthCheck.__dataclass_fields__
    values = dict(
        interval=r.field(obj, path, "interval", parse_duration, d["interval"].default),
        timeout=r.field(obj, path, "timeout", parse_duration, d["timeout"].default),
        healthy_threshold=r.field(obj, path, "healthy_threshold", _positive_int, 1),
        unhealthy_threshold=r.field(obj, path, "unhealthy_threshold", _positive_int, 2))
    if None in values.values():
        return None
    return model.HealthCheck(http_path=http_path, expected_statuses=statuses, **values)


def _outlier(r: _Reader, v: Any, path: str) -> model.OutlierDetection | None:
    keys = ("consecutive_5xx", "consecutive_gateway_failure", "base_ejection_time",
            "max_ejection_time", "max_ejection_percent")
    obj = r.mapping(v, path, keys)
    if obj is None:
        return None
    d = model.OutlierDetection.__dataclass_fields__
    values = {k: r.field(obj, path, k, parse_duration if k.endswith("_time") else _count,
                         d[k].default) for k in keys}
    if None in values.values():
        return None
    if values["max_ejection_percent"] > 100:
        r.error(_join(path, "max_ejection_percent"), "expected at most 100")
        return None
    return model.OutlierDetection(**values)


def _unique(r: _Reader, items: list, paths: list[str], what: str) -> None:
    seen: set[str] = set()
    for item, p in zip(items, paths, strict=True):
        if item is not None:
            if item.name in seen:
                r.error(f"{p}.name", f"duplicate {what} name {item.name!r}")
            seen.add(item.name)


def load_dict(data: Any) -> model.MeshConfig:
    """Builds a MeshConfig from parsed YAML, or raises ConfigError listing every problem."""
    r = _Reader()
    if data is None:
        data = {}
    obj = r.mapping(data, "", ("admin", "listeners", "route_configs", "clusters", "drain_timeout",
                               "xds"))
    if obj is None:
        raise ConfigError(["config: expected a mapping at the top level"])

    admin = None
    if obj.get("admin") is not None:
        a = r.mapping(obj["admin"], "admin", ("address",))
        if a is not None:
            address = r.field(a, "admin", "address", parse_address)
            admin = model.Admin(address) if address else None

    xds = _optional(r, obj, "", "xds", _xds)
    sections = {}
    for key, build in (("listeners", _listener), ("route_configs", _route_config),
                       ("clusters", _cluster)):
        pairs = r.items(obj, "", key)
        built = [build(r, v, p) for p, v in pairs]
        _unique(r, built, [p for p, _ in pairs], key[:-1].replace("_", " "))
        sections[key] = built

    listeners, route_configs, clusters = (sections[k] for k in ("listeners", "route_configs",
                                                                  "clusters"))
    def declared(key: str) -> set:
        """Names given in a section, even where the rest of an entry has errors: a broken
        cluster must not also make every route that names it an error."""
        value = obj.get(key)
        return {v.get("name") for v in value if isinstance(v, dict)} \
            if isinstance(value, list) else set()
    route_names = {rc.name for rc in route_configs if rc} | declared("route_configs")
    for i, lst in enumerate(listeners):
        # With a control plane, RDS and CDS may supply what the static part names.
        if lst and lst.route_config not in route_names and xds is None:
            r.error(f"listeners[{i}].route_config", f"unknown route config {lst.route_config!r}")
    cluster_names = {c.name for c in clusters if c} | declared("clusters")
    for i, rc in enumerate(route_configs):
        for j, vh in enumerate(rc.virtual_hosts if rc else ()):
            for k, route in enumerate(vh.routes):
                action = route.route
                if action is None or xds is not None:
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
    drain = r.field(obj, "", "drain_timeout", parse_duration, 5.0)
    if r.errors:
        raise ConfigError(r.errors)
    return model.MeshConfig(listeners=tuple(listeners), route_configs=tuple(route_configs),
                            clusters=tuple(clusters), admin=admin, drain_timeout=drain,
                            xds=xds if xds is not ... else None)


def load_text(text: str, source: str = "config") -> model.MeshConfig:
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError([f"{where}: invalid YAML: {getattr(e, 'problem', e)}"]) from None
    return load_dict(data)


def load_file(path: str) -> model.MeshConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: {e.strerror}"]) from None
    return load_text(text, path)
