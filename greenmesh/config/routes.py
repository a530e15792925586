"""Route configurations (Envoy's RouteConfiguration, virtual hosts, routes) -> the model.

The one place that knows what a route match, a route action, a retry policy, a hash policy, a
redirect or a header operation is, for the YAML file and for RDS alike. A match condition or an
action greenmesh cannot evaluate is refused even from a control plane: misrouting is worse than
refusing.
"""

from __future__ import annotations

from typing import Any

from greenmesh import model
from greenmesh.config.filters import filter_overrides
from greenmesh.config.reader import (
    INVALID,
    Invalid,
    Reader,
    boolean,
    count,
    duration,
    join,
    model_default,
    one_of,
    path_prefix,
    positive,
    regex,
    status,
    string,
    text,
)

HEADER_OPS = ("request_headers_to_add", "request_headers_to_remove",
              "response_headers_to_add", "response_headers_to_remove")
_STRING_MATCHERS = ("exact", "prefix", "suffix", "safe_regex")
_LEGACY_MATCHERS = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                    "safe_regex_match": "safe_regex"}
_APPEND_ACTIONS = {"APPEND_IF_EXISTS_OR_ADD": True, "OVERWRITE_IF_EXISTS_OR_ADD": False,
                   "ADD_IF_ABSENT": True, "OVERWRITE_IF_EXISTS": False}
_REDIRECT_CODES = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303,
                   "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}
_PATH_MATCHES = ("prefix", "path", "safe_regex", "path_separated_prefix")
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def route_config(r: Reader, v: Any, path: str, name: str | None = None
                 ) -> model.RouteConfig | None:
    """A route configuration; ``name`` names an inline one (an HCM's ``route_config``)."""
    obj = r.mapping(v, path, ("name", "virtual_hosts", "typed_per_filter_config", *HEADER_OPS))
    if obj is None:
        return None
    mark = r.mark()
    name = r.field(obj, path, "name", string) if name is None else name
    ops = header_ops(r, obj, path)
    overrides = filter_overrides(r, obj, path)
    pairs = r.items(obj, path, "virtual_hosts", required=r.strict)
    vhosts = [virtual_host(r, x, p) for p, x in pairs]
    if r.failed_since(mark) or name is None or ops is None:
        return None
    # Checked on the built hosts, which are still returned: the routes they name are checked
    # too, so one pass shows every problem.
    seen: dict[str, str] = {}
    for vh, (p, _) in zip(vhosts, pairs, strict=True):
        for i, d in enumerate(vh.domains if vh else ()):
            if d in seen:
                r.error(f"{p}.domains[{i}]", f"domain {d!r} already used by virtual host {seen[d]!r}")
            seen[d] = vh.name if vh else ""
    return model.RouteConfig(name=name, virtual_hosts=tuple(vh for vh in vhosts if vh),
                             headers=ops, filter_overrides=overrides or ())


def _domain(value: Any) -> str:
    value = string(value).lower()
    if "*" in value and value != "*" and not (value.count("*") == 1 and (
            value.startswith("*") or value.endswith("*"))):
        raise Invalid("expected an exact domain, *.suffix, prefix.* or *")
    return value


def virtual_host(r: Reader, v: Any, path: str) -> model.VirtualHost | None:
    obj = r.mapping(v, path, ("name", "domains", "routes", "typed_per_filter_config",
                              *HEADER_OPS))
    if obj is None:
        return None
    mark = r.mark()
    name = r.field(obj, path, "name", string)
    ops = header_ops(r, obj, path)
    overrides = filter_overrides(r, obj, path)
    domains = []
    for p, d in r.items(obj, path, "domains", required=True):
        try:
            domains.append(_domain(d))
        except Invalid as e:
            r.error(p, str(e))
    routes = [route(r, rv, p) for p, rv in r.items(obj, path, "routes", required=r.strict)]
    if r.failed_since(mark) or name is None or ops is None:
        return None
    return model.VirtualHost(name=name, domains=tuple(domains),
                             routes=tuple(x for x in routes if x), headers=ops,
                             filter_overrides=overrides or ())


def route(r: Reader, v: Any, path: str) -> model.Route | None:
    obj = r.mapping(v, path, ("name", "match", "route", "direct_response", "redirect",
                              "typed_per_filter_config", *HEADER_OPS),
                    refuse=("filter_action", "non_forwarding_action"))
    if obj is None:
        return None
    mark = r.mark()
    m = match(r, obj.get("match"), join(path, "match"))
    kinds = [k for k in ("route", "direct_response", "redirect") if obj.get(k) is not None]
    if len(kinds) != 1:
        r.error(path, "expected exactly one of route, direct_response, redirect")
        return None
    kind = kinds[0]
    where = join(path, kind)
    act = action(r, obj[kind], where) if kind == "route" else None
    direct = direct_response(r, obj[kind], where) if kind == "direct_response" else None
    redir = redirect(r, obj[kind], where) if kind == "redirect" else None
    name = r.field(obj, path, "name", text, "")
    ops = header_ops(r, obj, path)
    overrides = filter_overrides(r, obj, path)
    if r.failed_since(mark) or m is None or name is None or ops is None or \
            (act, direct, redir) == (None, None, None):
        return None
    return model.Route(match=m, name=name, headers=ops, route=act, direct_response=direct,
                       redirect=redir, filter_overrides=overrides or ())


def match(r: Reader, v: Any, path: str) -> model.RouteMatch | None:
    # A condition greenmesh cannot evaluate refuses the resource (misrouting is worse).
    m = r.mapping(v, path, (*_PATH_MATCHES, "case_sensitive", "headers", "query_parameters",
                            "dynamic_metadata"),
                  refuse=("connect_matcher", "path_match_policy", "runtime_fraction", "cookies",
                          "grpc", "tls_context", "filter_state"))
    if m is None:
        return None
    mark = r.mark()
    prefix = r.field(m, path, "prefix", text if not r.strict else path_prefix, None)
    exact = r.field(m, path, "path", path_prefix, None)
    rx = r.field(m, path, "safe_regex", regex, None)
    separated = r.field(m, path, "path_separated_prefix", path_prefix, None)
    case = r.field(m, path, "case_sensitive", boolean, True)
    headers = [header_matcher(r, h, p) for p, h in r.items(m, path, "headers")]
    queries = [query_matcher(r, q, p) for p, q in r.items(m, path, "query_parameters")]
    meta = [metadata_matcher(r, x, p) for p, x in r.items(m, path, "dynamic_metadata")]
    given = [k for k in _PATH_MATCHES if m.get(k) is not None]
    if len(given) > 1:
        r.error(path, "expected at most one of prefix, path, safe_regex, path_separated_prefix")
    elif not given and not headers and not queries and not meta and "prefix" not in m:
        r.error(path, "expected one of prefix, path, safe_regex, path_separated_prefix, "
                      "or headers")
    if separated is not None and separated.endswith("/") and separated != "/":
        r.error(join(path, "path_separated_prefix"), "must not end with /")
    if r.failed_since(mark):
        return None
    return model.RouteMatch(prefix=prefix, path=exact, safe_regex=rx,
                            path_separated_prefix=separated, case_sensitive=bool(case),
                            headers=tuple(h for h in headers if h),
                            query_parameters=tuple(q for q in queries if q),
                            dynamic_metadata=tuple(x for x in meta if x))


def _string_match(r: Reader, obj: dict, path: str) -> dict[str, str] | None:
    """The string matcher of a header or query-parameter matcher (v3 and legacy spellings)."""
    kinds: dict[str, Any] = {}
    if obj.get("string_match") is not None:
        spath = join(path, "string_match")
        sm = r.mapping(obj["string_match"], spath, _STRING_MATCHERS,
                       refuse=("contains", "ignore_case"))
        for kind in _STRING_MATCHERS if sm is not None else ():
            if sm is not None and sm.get(kind) is not None:
                kinds[kind] = r.field(sm, spath, kind, regex if kind == "safe_regex" else text)
    for legacy, kind in _LEGACY_MATCHERS.items():
        if obj.get(legacy) is not None:
            kinds[kind] = r.field(obj, path, legacy, regex if kind == "safe_regex" else text)
    if len(kinds) > 1:
        r.error(path, "expected one matcher (string_match with one of exact, prefix, suffix, "
                      "safe_regex; or a legacy *_match key)")
        return None
    return None if None in kinds.values() else kinds


def header_matcher(r: Reader, v: Any, path: str) -> model.HeaderMatcher | None:
    obj = r.mapping(v, path, ("name", "string_match", "present_match", "invert_match",
                              *_LEGACY_MATCHERS),
                    refuse=("range_match", "contains_match", "treat_missing_header_as_empty"))
    if obj is None:
        return None
    mark = r.mark()
    name = r.field(obj, path, "name", string)
    invert = r.field(obj, path, "invert_match", boolean, False)
    present = r.field(obj, path, "present_match", boolean, True)
    kinds = _string_match(r, obj, path)
    if r.failed_since(mark) or name is None or kinds is None:
        return None
    return model.HeaderMatcher(name=name.lower(), exact=kinds.get("exact"),
                               prefix=kinds.get("prefix"), suffix=kinds.get("suffix"),
                               regex=kinds.get("safe_regex"), present=bool(present),
                               invert=bool(invert))


def metadata_matcher(r: Reader, v: Any, path: str) -> model.MetadataMatcher | None:
    """Envoy's MetadataMatcher: ``filter`` (the namespace), ``path`` (a list of ``key``s) and a
    ``value`` matcher (``string_match`` or ``present_match``)."""
    obj = r.mapping(v, path, ("filter", "path", "value", "invert"))
    if obj is None:
        return None
    mark = r.mark()
    ns = r.field(obj, path, "filter", string)
    keys = []
    for p, seg in r.items(obj, path, "path", required=True):
        so = r.mapping(seg, p, ("key",))
        key = r.field(so, p, "key", string) if so is not None else None
        if key is not None:
            keys.append(key)
    invert = r.field(obj, path, "invert", boolean, False)
    vpath = join(path, "value")
    value = r.mapping(obj.get("value"), vpath, ("string_match", "present_match"),
                      refuse=("null_match", "double_match", "bool_match", "list_match",
                              "or_match"))
    if value is None:
        return None
    present = r.field(value, vpath, "present_match", boolean, True)
    kinds = _string_match(r, value, vpath) if value.get("string_match") is not None else {}
    if value.get("string_match") is None and value.get("present_match") is None:
        r.error(vpath, "expected string_match or present_match")
    if r.failed_since(mark) or ns is None or kinds is None:
        return None
    return model.MetadataMatcher(ns, tuple(keys), exact=kinds.get("exact"),
                                 prefix=kinds.get("prefix"), suffix=kinds.get("suffix"),
                                 regex=kinds.get("safe_regex"), present=bool(present),
                                 invert=bool(invert))


def query_matcher(r: Reader, v: Any, path: str) -> model.QueryParameterMatcher | None:
    obj = r.mapping(v, path, ("name", "string_match", "present_match"))
    if obj is None:
        return None
    mark = r.mark()
    name = r.field(obj, path, "name", string)
    present = r.field(obj, path, "present_match", boolean, True)
    kinds = _string_match(r, obj, path)
    if r.failed_since(mark) or name is None or kinds is None:
        return None
    return model.QueryParameterMatcher(name=name, exact=kinds.get("exact"),
                                       prefix=kinds.get("prefix"), suffix=kinds.get("suffix"),
                                       regex=kinds.get("safe_regex"), present=bool(present))


def header_ops(r: Reader, obj: dict, path: str) -> model.HeaderOps | None:
    """Envoy's request/response headers to add and remove, at any level."""
    mark = r.mark()

    def adds(key: str) -> tuple[model.HeaderValueOption, ...]:
        out = []
        for p, item in r.items(obj, path, key):
            o = r.mapping(item, p, ("header", "append", "append_action", "keep_empty_value"))
            h = r.mapping(o.get("header") if o else None, join(p, "header"), ("key", "value"))
            if o is None or h is None:
                continue
            hk = r.field(h, join(p, "header"), "key", string)
            hv = r.field(h, join(p, "header"), "value", text, "")
            append = r.field(o, p, "append", boolean, None)
            action = r.field(o, p, "append_action", one_of(_APPEND_ACTIONS), None)
            if hk is None or hv is None:
                continue
            if append is None:  # the deprecated bool wins when set, as in Envoy
                append = _APPEND_ACTIONS[action] if action else True
            out.append(model.HeaderValueOption(hk.lower(), hv, append))
        return tuple(out)

    def removes(key: str) -> tuple[str, ...]:
        out = []
        for p, item in r.items(obj, path, key):
            try:
                out.append(string(item).lower())
            except Invalid as e:
                r.error(p, str(e))
        return tuple(out)
    ops = model.HeaderOps(adds("request_headers_to_add"), removes("request_headers_to_remove"),
                          adds("response_headers_to_add"), removes("response_headers_to_remove"))
    return None if r.failed_since(mark) else ops


def direct_response(r: Reader, v: Any, path: str) -> model.DirectResponse | None:
    d = r.mapping(v, path, ("status", "body"))
    if d is None:
        return None
    code = r.field(d, path, "status", status)
    body = d.get("body", "")
    if isinstance(body, dict):  # Envoy's DataSource
        bpath = join(path, "body")
        b = r.mapping(body, bpath, ("inline_string",), refuse=("filename", "inline_bytes",
                                                               "environment_variable"))
        body = b.get("inline_string", "") if b is not None else ""
    if not isinstance(body, str):
        r.error(join(path, "body"), "expected a string or {inline_string: ...}")
        return None
    return None if code is None else model.DirectResponse(code, body)


def _redirect_code(value: Any) -> int:
    code = _REDIRECT_CODES.get(value, value) if isinstance(value, str) else value
    if code not in (301, 302, 303, 307, 308):
        raise Invalid("expected 301, 302, 303, 307 or 308 (or Envoy's names, e.g. "
                      "MOVED_PERMANENTLY)")
    return code


def redirect(r: Reader, v: Any, path: str) -> model.Redirect | None:
    d = r.mapping(v, path, ("scheme_redirect", "https_redirect", "host_redirect",
                            "port_redirect", "path_redirect", "prefix_rewrite", "response_code",
                            "strip_query"), refuse=("regex_rewrite",))
    if d is None:
        return None
    mark = r.mark()
    code = r.field(d, path, "response_code", _redirect_code, 301)
    scheme = r.field(d, path, "scheme_redirect", one_of(("http", "https")), None)
    if r.field(d, path, "https_redirect", boolean, False):
        scheme = "https"
    host = r.field(d, path, "host_redirect", string, None)
    port = r.field(d, path, "port_redirect", positive, None)
    target = r.field(d, path, "path_redirect", path_prefix, None)
    prefix = r.field(d, path, "prefix_rewrite", text, None)
    strip = r.field(d, path, "strip_query", boolean, False)
    if r.failed_since(mark) or code is None:
        return None
    return model.Redirect(scheme_redirect=scheme, host_redirect=host, port_redirect=port,
                          path_redirect=target, prefix_rewrite=prefix, response_code=code,
                          strip_query=bool(strip))


def _retry_on(r: Reader, path: str) -> Any:
    def convert(value: Any) -> tuple[str, ...]:
        items = [x.strip() for x in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
            raise Invalid(f"expected a comma-separated list of {', '.join(model.RETRY_ON)}")
        known = []
        for x in items:
            if x in model.RETRY_ON:
                known.append(x)
            else:
                r.not_honoured(path, f"{x!r} is not supported (supported: "
                                     f"{', '.join(model.RETRY_ON)})")
        return tuple(known)
    return convert


def retry_policy(r: Reader, v: Any, path: str) -> model.RetryPolicy | None:
    obj = r.mapping(v, path, ("retry_on", "num_retries", "per_try_timeout",
                              "retriable_status_codes", "retry_back_off",
                              "retry_host_predicate", "host_selection_retry_max_attempts"))
    if obj is None:
        return None
    mark = r.mark()
    retry_on = r.field(obj, path, "retry_on", _retry_on(r, join(path, "retry_on")))
    num = r.field(obj, path, "num_retries", count, 1)
    per_try = r.field(obj, path, "per_try_timeout", duration, None)
    codes = []
    for p, c in r.items(obj, path, "retriable_status_codes"):
        try:
            codes.append(status(c))
        except Invalid as e:
            r.error(p, str(e))
    base = model_default(model.RetryPolicy, "base_interval")
    top = model_default(model.RetryPolicy, "max_interval")
    if obj.get("retry_back_off") is not None:
        bpath = join(path, "retry_back_off")
        b = r.mapping(obj["retry_back_off"], bpath, ("base_interval", "max_interval"))
        if b is not None:
            base = r.field(b, bpath, "base_interval", duration)
            top = r.field(b, bpath, "max_interval", duration, None)
    previous = False
    for p, pred in r.items(obj, path, "retry_host_predicate"):
        po = r.mapping(pred, p, ("name", "typed_config"))
        if po is not None and po.get("name") != _PREVIOUS_HOSTS:
            r.error(join(p, "name"), f"only {_PREVIOUS_HOSTS} is supported")
        previous = True
    attempts = r.field(obj, path, "host_selection_retry_max_attempts", count,
                       model_default(model.RetryPolicy, "host_selection_retry_max_attempts"))
    if r.failed_since(mark) or retry_on is None or num is None or base is None \
            or attempts is None:
        return None
    return model.RetryPolicy(retry_on, num, per_try or None, tuple(codes), base, top,
                             previous_hosts=previous,
                             host_selection_retry_max_attempts=attempts)


def hash_policy(r: Reader, v: Any, path: str) -> model.HashPolicy | None:
    obj = r.mapping(v, path, ("header", "cookie", "connection_properties", "terminal"),
                    refuse=("query_parameter", "filter_state"))
    if obj is None:
        return None
    if len([k for k in ("header", "cookie", "connection_properties") if k in obj]) != 1:
        r.error(path, "expected one of header, cookie, connection_properties")
        return None
    if "header" in obj:
        hpath = join(path, "header")
        h = r.mapping(obj["header"], hpath, ("header_name",), refuse=("regex_rewrite",))
        name = r.field(h, hpath, "header_name", string) if h is not None else None
        return model.HashPolicy(header=name.lower()) if name else None
    if "cookie" in obj:
        cpath = join(path, "cookie")
        c = r.mapping(obj["cookie"], cpath, ("name", "ttl", "path"))
        name = r.field(c, cpath, "name", string) if c is not None else None
        return model.HashPolicy(cookie=name) if name else None
    cpath = join(path, "connection_properties")
    cp = r.mapping(obj["connection_properties"], cpath, ("source_ip",))
    if cp is None or r.field(cp, cpath, "source_ip", boolean) is not True:
        r.error(join(cpath, "source_ip"), "expected true")
        return None
    return model.HashPolicy(source_ip=True)


def _weighted_clusters(r: Reader, v: Any, path: str) -> tuple[model.WeightedCluster, ...] | None:
    w = r.mapping(v, path, ("clusters", "total_weight"))
    if w is None:
        return None
    mark = r.mark()
    out = []
    for p, c in r.items(w, path, "clusters", required=True):
        co = r.mapping(c, p, ("name", "weight"), refuse=("cluster_header",))
        name = r.field(co, p, "name", string) if co is not None else None
        weight = r.field(co, p, "weight", count, 0) if co is not None else None
        if name is not None and weight is not None:
            out.append(model.WeightedCluster(name, weight))
    if out and not any(c.weight for c in out):
        r.error(path, "the weights add up to 0")
    return None if r.failed_since(mark) else tuple(out)


def _regex_rewrite(r: Reader, v: Any, path: str) -> tuple[str, str] | None:
    rr = r.mapping(v, path, ("pattern", "substitution"))
    if rr is None:
        return None
    pattern = r.field(rr, path, "pattern", regex)
    sub = r.field(rr, path, "substitution", text, "")
    return None if pattern is None or sub is None else (pattern, sub)


def action(r: Reader, v: Any, path: str) -> model.RouteAction | None:
    a = r.mapping(v, path, ("cluster", "weighted_clusters", "cluster_header", "timeout",
                            "prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
                            "auto_host_rewrite", "retry_policy", "hash_policy",
                            "request_mirror_policies", "idle_timeout"),
                  refuse=("cluster_specifier_plugin", "inline_cluster_specifier_plugin",
                          "path_rewrite_policy", "path_rewrite", "host_rewrite_header",
                          "host_rewrite_path_regex", "upgrade_configs"))
    if a is None:
        return None
    mark = r.mark()
    chosen = [k for k in ("cluster", "weighted_clusters", "cluster_header") if a.get(k)]
    if len(chosen) != 1:
        r.error(path, "expected exactly one of cluster, weighted_clusters, cluster_header")
        return None
    cluster = r.field(a, path, "cluster", string, None)
    header = r.field(a, path, "cluster_header", string, None)
    weighted = r.section(a, path, "weighted_clusters", _weighted_clusters)
    timeout = r.field(a, path, "timeout", duration, model_default(model.RouteAction, "timeout"))
    idle = r.field(a, path, "idle_timeout", duration,
                   model_default(model.RouteAction, "idle_timeout"))
    rewrite = r.section(a, path, "regex_rewrite", _regex_rewrite)
    retry = r.section(a, path, "retry_policy", retry_policy)
    hashes = [hash_policy(r, h, p) for p, h in r.items(a, path, "hash_policy")]
    mirrors = []
    for p, m in r.items(a, path, "request_mirror_policies"):
        mo = r.mapping(m, p, ("cluster", "runtime_fraction", "trace_sampled"),
                       refuse=("cluster_header",))
        mirror = r.field(mo, p, "cluster", string) if mo is not None else None
        if mirror is not None:
            mirrors.append(mirror)
    prefix_rewrite = r.field(a, path, "prefix_rewrite", text, None)
    host = r.field(a, path, "host_rewrite_literal", string, None)
    auto = r.field(a, path, "auto_host_rewrite", boolean, False)
    if r.failed_since(mark) or INVALID in (weighted, rewrite, retry) or timeout is None \
            or idle is None:
        return None
    return model.RouteAction(cluster=cluster, timeout=timeout, weighted_clusters=weighted or (),
                             cluster_header=header.lower() if header else None,
                             prefix_rewrite=prefix_rewrite, regex_rewrite=rewrite,
                             host_rewrite_literal=host, auto_host_rewrite=bool(auto),
                             retry_policy=retry, hash_policy=tuple(h for h in hashes if h),
                             request_mirror_policies=tuple(mirrors), idle_timeout=idle)
