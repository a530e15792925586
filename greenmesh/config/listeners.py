"""Listeners (Envoy's Listener and its HTTP connection manager) -> the model, for the YAML file
and LDS alike.

greenmesh's short spelling (``address: host:port``, ``protocol``, ``route_config``, ``tls``) and
Envoy's (``address.socket_address``, one filter chain holding an HTTP connection manager with
``rds`` or an inline ``route_config``, a TLS transport socket) say the same things. A listener's
own settings that Envoy has no field for reach it from a control plane under its
``metadata.filter_metadata.greenmesh`` (``protocol: bolt``, ``max_connections``...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenmesh import model
from greenmesh.access_format import compile_json, compile_text
from greenmesh.config.clusters import socket_address
from greenmesh.config.filters import http_filters
from greenmesh.config.reader import (
    INVALID,
    Invalid,
    Reader,
    boolean,
    duration,
    integer,
    join,
    model_default,
    one_of,
    optional_duration,
    own_settings,
    positive,
    string,
    typed,
)
from greenmesh.config.reader import address as host_port
from greenmesh.config.routes import route_config
from greenmesh.config.tls import downstream_tls, tls_server

HCM_NAME = "envoy.filters.network.http_connection_manager"
_INSPECTORS = ("envoy.filters.listener.tls_inspector", "envoy.filters.listener.http_inspector")
_CODECS = {"AUTO": "auto", "HTTP1": "http1", "HTTP2": "http2"}
_OWN = ("protocol", "max_connections", "max_request_headers_kb", "idle_timeout", "access_log",
        "accept_http_10", "max_headers_count", "request_headers_timeout",
        "max_concurrent_streams", "max_stream_duration", "max_frame_size",
        "per_connection_buffer_limit_bytes", "stream_idle_timeout", "generate_request_id")


def frame_size(value: Any) -> int:
    """HTTP/2's range for SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2), which bounds RPC frames
    too."""
    value = integer(value)
    if not 1 << 14 <= value <= (1 << 24) - 1:
        raise Invalid("expected a frame size between 16384 and 16777215")
    return value


def _format(r: Reader, text: Any, json_fields: Any, path: str, text_key: str,
            json_key: str) -> tuple[str | None, tuple[tuple[str, str], ...] | None]:
    """A format string or JSON fields, each compiled once here to refuse what cannot work."""
    if text is not None and json_fields is not None:
        r.error(path, f"give {text_key} or {json_key}, not both")
        return None, None
    if text is not None:
        if not isinstance(text, str):
            r.error(join(path, text_key), "expected a format string")
            return None, None
        _compiles(r, compile_text, text, join(path, text_key))
        return text, None
    if json_fields is not None:
        if not isinstance(json_fields, dict) or not json_fields:
            r.error(join(path, json_key), "expected a mapping of field names to format strings")
            return None, None
        _compiles(r, compile_json, json_fields, join(path, json_key))
        return None, tuple((str(k), v) for k, v in json_fields.items())
    return None, None


def _compiles(r: Reader, compile_format: Callable[[Any], object], fmt: Any, path: str) -> None:
    """An access-log format that does not compile is an error at ``path`` (unknown operators)."""
    try:
        compile_format(fmt)
    except ValueError as e:
        r.error(path, str(e))


def access_log(r: Reader, v: Any, path: str) -> tuple[bool, model.AccessLogFormat | None]:
    """greenmesh's: ``true``/``false``, or ``{path, format | json_format}`` (Envoy's command
    operators) for a listener's own format and file."""
    if isinstance(v, bool):
        return v, None
    obj = r.mapping(v, path, ("path", "format", "json_format"))
    if obj is None:
        return True, None
    text, fields = _format(r, obj.get("format"), obj.get("json_format"), path, "format",
                           "json_format")
    file = r.field(obj, path, "path", string, None)
    return True, model.AccessLogFormat(file, text, fields)


_FILE_LOGGER = "envoy.access_loggers.file"
_STDOUT_LOGGER = "envoy.access_loggers.stdout"


def _envoy_access_logs(r: Reader, v: Any, path: str
                       ) -> tuple[bool, model.AccessLogFormat | None]:
    """Envoy's HCM access_log: a file or stdout logger with its log_format (one of them)."""
    items = r.items({"access_log": v}, "", "access_log")
    if not items:
        return False, None
    if len(items) > 1:
        r.not_honoured(path, "one access logger per listener: the first is used")
    ipath, item = items[0]
    ipath = path + ipath[len("access_log"):]
    obj = r.mapping(item, ipath, ("name", "typed_config", "filter"), refuse=("filter",))
    if obj is None:
        return True, None
    name = obj.get("name")
    if name not in (_FILE_LOGGER, _STDOUT_LOGGER):
        r.error(join(ipath, "name"), f"expected {_FILE_LOGGER} or {_STDOUT_LOGGER}")
        return True, None
    tpath = join(ipath, "typed_config")
    cfg = typed(r, obj.get("typed_config") or {}, tpath,
                "FileAccessLog" if name == _FILE_LOGGER else "StdoutAccessLog",
                ("path", "log_format", "format", "json_format"))
    if cfg is None:
        return True, None
    file = r.field(cfg, tpath, "path", string) if name == _FILE_LOGGER else None
    fmt = cfg.get("log_format")
    text: Any = cfg.get("format")
    fields: Any = cfg.get("json_format")
    fpath = tpath
    if fmt is not None:
        fpath = join(tpath, "log_format")
        lf = r.mapping(fmt, fpath, ("text_format", "text_format_source", "json_format",
                                    "omit_empty_values", "content_type"))
        if lf is None:
            return True, None
        text = lf.get("text_format")
        if lf.get("text_format_source") is not None:
            source = r.mapping(lf["text_format_source"], join(fpath, "text_format_source"),
                               ("inline_string",))
            text = source.get("inline_string") if source else None
        fields = lf.get("json_format")
    text, json_fields = _format(r, text, fields, fpath, "text_format", "json_format")
    return True, model.AccessLogFormat(file, text, json_fields)


def listener(r: Reader, v: Any, path: str
             ) -> tuple[model.Listener, model.RouteConfig | None] | None:
    """The listener, and its inline route config if it has one (named after the listener
    unless it names itself)."""
    obj = r.mapping(v, path, ("name", "address", "filter_chains", "metadata", "stat_prefix",
                              "listener_filters", "route_config", "tls", "http_filters",
                              "enable_reuse_port", *_OWN),
                    refuse=("default_filter_chain",))
    if obj is None:
        return None
    mark = r.mark()
    name = r.field(obj, path, "name", string)
    if isinstance(obj.get("address"), dict):
        address = socket_address(r, obj["address"], join(path, "address"), allow_port_0=True)
    else:
        address = r.field(obj, path, "address", host_port)
    own = own_settings(r, obj, path, _OWN, _OWN)
    for p, f in r.items(obj, path, "listener_filters"):
        if not isinstance(f, dict) or f.get("name") not in _INSPECTORS:
            r.error(p, f"only {', '.join(_INSPECTORS)} (which greenmesh always does)")
    values: dict[str, Any] = {}
    inline = None
    tls = None
    if obj.get("filter_chains") is not None:
        for key in ("route_config", "tls", "http_filters"):
            if obj.get(key) is not None:
                r.error(join(path, key),
                        "give filter_chains or route_config/tls/http_filters, not both")
        chain = _filter_chain(r, obj, path, own, values)
        if chain is not None:
            inline, tls = chain
    else:
        values["route_config"] = r.field(obj, path, "route_config", string)
        tls = r.section(obj, path, "tls", tls_server)
        values["http_filters"] = http_filters(r, obj, path)
    if "protocol" not in values:
        src, src_path = own.get("protocol", (obj, path))
        values["protocol"] = r.field(src, src_path, "protocol",
                                     one_of((*r.protocols, "auto")), "http1")
    if "access_log" not in values or "access_log" in own:
        src, src_path = own.get("access_log", (obj, path))
        if src.get("access_log") is not None:
            values["access_log"], values["access_log_format"] = access_log(
                r, src["access_log"], join(src_path, "access_log"))
    for key, convert in (("max_connections", positive), ("max_request_headers_kb", positive),
                         ("idle_timeout", duration), ("generate_request_id", boolean),
                         ("accept_http_10", boolean), ("max_headers_count", positive),
                         ("request_headers_timeout", optional_duration),
                         ("max_concurrent_streams", positive),
                         ("max_stream_duration", optional_duration),
                         ("max_frame_size", frame_size),
                         ("per_connection_buffer_limit_bytes", positive),
                         ("stream_idle_timeout", optional_duration)):
        if key not in values or key in own:
            src, src_path = own.get(key, (obj, path))
            values[key] = r.field(src, src_path, key, convert,
                                  model_default(model.Listener, key))
    values["reuse_port"] = r.field(obj, path, "enable_reuse_port", boolean, False)
    if r.failed_since(mark) or name is None or address is None or tls is INVALID or \
            values.get("http_filters", ()) is None:
        return None
    if inline is not None and values["route_config"] is None:
        inline = model.RouteConfig(f"{name}-inline", inline.virtual_hosts, inline.headers)
        values["route_config"] = inline.name
    return model.Listener(name=name, address=address, tls=tls, **values), inline


def _filter_chain(r: Reader, obj: dict, path: str, own: dict[str, tuple[dict, str]],
                  values: dict[str, Any]) -> tuple[model.RouteConfig | None, Any] | None:
    """The one filter chain: its HTTP connection manager and TLS transport socket."""
    chains = r.items(obj, path, "filter_chains", required=True)
    if len(chains) != 1:
        r.error(join(path, "filter_chains"), "expected exactly one filter chain")
        return None
    cpath, chain = chains[0]
    c = r.mapping(chain, cpath, ("filters", "name", "transport_socket"),
                  refuse=("filter_chain_match",))
    if c is None:
        return None
    tls = r.section(c, cpath, "transport_socket", downstream_tls)
    filters = r.items(c, cpath, "filters", required=True)
    if len(filters) != 1:
        r.error(join(cpath, "filters"), "expected one http_connection_manager")
        return None
    fpath, f = filters[0]
    fo = r.mapping(f, fpath, ("name", "typed_config"))
    if fo is None:
        return None
    inline = _hcm(r, fo.get("typed_config"), join(fpath, "typed_config"), own, values)
    return inline, tls


# The connection manager's fields that set a listener's own settings: (options message, or ""
# for the manager itself; field, spelled as the listener's; converter).
_HCM_SETTINGS = (("", "max_request_headers_kb", positive),
                 ("", "request_headers_timeout", optional_duration),
                 ("", "stream_idle_timeout", optional_duration),
                 ("", "generate_request_id", boolean),
                 ("http_protocol_options", "accept_http_10", boolean),
                 ("http2_protocol_options", "max_concurrent_streams", positive),
                 ("common_http_protocol_options", "idle_timeout", duration),
                 ("common_http_protocol_options", "max_headers_count", positive),
                 ("common_http_protocol_options", "max_stream_duration", optional_duration))


def _hcm(r: Reader, v: Any, path: str, own: dict[str, tuple[dict, str]],
         values: dict[str, Any]) -> model.RouteConfig | None:
    """Envoy's HttpConnectionManager: codec, routes (RDS or inline), header limits."""
    hcm = typed(r, v, path, "HttpConnectionManager",
                ("codec_type", "stat_prefix", "rds", "route_config", "http_filters",
                 "max_request_headers_kb", "common_http_protocol_options",
                 "http_protocol_options", "http2_protocol_options", "request_headers_timeout",
                 "stream_idle_timeout", "access_log", "generate_request_id"),
                refuse=("scoped_routes",))
    if hcm is None:
        return None
    codec = r.field(hcm, path, "codec_type", one_of(_CODECS), "AUTO")
    if "protocol" in own and codec not in (None, "AUTO"):
        src, src_path = own["protocol"]
        r.error(join(src_path, "protocol"), f"contradicts {join(path, 'codec_type')}")
    elif "protocol" not in own and codec is not None:
        values["protocol"] = _CODECS[codec]
    values["http_filters"] = http_filters(r, hcm, path)
    where = {"": (hcm, path)}  # each options message given, with its path
    for section in dict.fromkeys(s for s, _, _ in _HCM_SETTINGS if s and hcm.get(s) is not None):
        spath = join(path, section)
        m = r.mapping(hcm[section], spath, [k for s, k, _ in _HCM_SETTINGS if s == section])
        if m is not None:
            where[section] = (m, spath)
    for section, key, convert in _HCM_SETTINGS:
        given = where.get(section)
        if given is not None and given[0].get(key) is not None:
            values[key] = r.field(given[0], given[1], key, convert)
    if hcm.get("access_log") is not None:
        values["access_log"], values["access_log_format"] = _envoy_access_logs(
            r, hcm["access_log"], join(path, "access_log"))
    if (hcm.get("rds") is None) == (hcm.get("route_config") is None):
        r.error(path, "expected rds or route_config")
        return None
    if hcm.get("rds") is not None:
        rpath = join(path, "rds")
        rds = r.mapping(hcm["rds"], rpath, ("route_config_name", "config_source"))
        values["route_config"] = r.field(rds, rpath, "route_config_name", string) \
            if rds is not None else None
        return None
    rc = hcm["route_config"]
    inline = route_config(r, rc, join(path, "route_config"),
                          name=(rc.get("name") if isinstance(rc, dict) else None) or "")
    values["route_config"] = inline.name if inline is not None and inline.name else None
    return inline
