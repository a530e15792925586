"""TLS settings: greenmesh's short ``tls:`` sections and Envoy's TLS transport sockets.

Certificates and CAs come from files (checked to be readable, and a listener's pair to load);
inline key material and SDS are refused.
"""

from __future__ import annotations

import ssl
from typing import Any

from greenmesh import model
from greenmesh.config.reader import (
    INVALID,
    Reader,
    join,
    readable_file,
    string,
    text,
    typed,
)


def client_tls(r: Reader, obj: dict, path: str, own: dict[str, tuple[dict, str]]
               ) -> model.TlsClient | None:
    """greenmesh's ``tls: {sni, ca}``, or Envoy's UpstreamTlsContext transport socket."""
    if "tls" in own:
        if obj.get("transport_socket") is not None:
            r.error(join(path, "tls"), "give tls or transport_socket, not both")
        return r.section(obj, path, "tls", _short_tls)
    if obj.get("transport_socket") is None:
        return None
    tpath = join(path, "transport_socket")
    ts = r.mapping(obj["transport_socket"], tpath, ("name", "typed_config"))
    if ts is None:
        return INVALID
    if ts.get("name") == "envoy.transport_sockets.raw_buffer":
        return None
    cpath = join(tpath, "typed_config")
    ctx = typed(r, ts.get("typed_config"), cpath, "UpstreamTlsContext",
                ("sni", "common_tls_context"))
    if ctx is None:
        return INVALID
    mark = r.mark()
    sni = r.field(ctx, cpath, "sni", text, "")
    ca = ""
    if ctx.get("common_tls_context") is not None:
        ccpath = join(cpath, "common_tls_context")
        cc = r.mapping(ctx["common_tls_context"], ccpath, ("validation_context", "alpn_protocols",
                                                           "tls_params"))
        vc = cc.get("validation_context") if cc is not None else None
        if vc is not None:
            vpath = join(ccpath, "validation_context")
            v = r.mapping(vc, vpath, ("trusted_ca",))
            if v is not None and v.get("trusted_ca") is not None:
                ca = _file_source(r, v["trusted_ca"], join(vpath, "trusted_ca")) or ""
    return INVALID if r.failed_since(mark) else model.TlsClient(sni or "", ca)


def _file_source(r: Reader, v: Any, path: str) -> str | None:
    """An Envoy DataSource that names a file (inline material is not supported)."""
    d = r.mapping(v, path, ("filename",), refuse=("inline_string", "inline_bytes",
                                                  "environment_variable"))
    return r.field(d, path, "filename", readable_file) if d is not None else None


def _short_tls(r: Reader, v: Any, path: str) -> model.TlsClient | None:
    obj = r.mapping(v, path, ("sni", "ca"))
    if obj is None:
        return None
    sni = r.field(obj, path, "sni", string, "")
    ca = r.field(obj, path, "ca", readable_file, "")
    return None if sni is None or ca is None else model.TlsClient(sni, ca)


def tls_server(r: Reader, v: Any, path: str) -> model.TlsServer | None:
    """greenmesh's listener ``tls: {certificate_chain, private_key}``."""
    obj = r.mapping(v, path, ("certificate_chain", "private_key"))
    if obj is None:
        return None
    chain = r.field(obj, path, "certificate_chain", readable_file)
    key = r.field(obj, path, "private_key", readable_file)
    return _loads(r, path, chain, key)


def _loads(r: Reader, path: str, chain: str | None, key: str | None) -> model.TlsServer | None:
    if chain is None or key is None:
        return None
    try:  # the stdlib context, only to check that the pair loads
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(chain, key)
    except (ssl.SSLError, OSError) as e:
        r.error(path, f"certificate and key do not load: {e}")
        return None
    return model.TlsServer(chain, key)


def downstream_tls(r: Reader, v: Any, path: str) -> model.TlsServer | None:
    """Envoy's DownstreamTlsContext transport socket: one certificate from files."""
    ts = r.mapping(v, path, ("name", "typed_config"))
    if ts is None:
        return None
    cpath = join(path, "typed_config")
    ctx = typed(r, ts.get("typed_config"), cpath, "DownstreamTlsContext",
                ("common_tls_context",), refuse=("require_client_certificate",))
    if ctx is None:
        return None
    ccpath = join(cpath, "common_tls_context")
    cc = r.mapping(ctx.get("common_tls_context"), ccpath, ("tls_certificates", "alpn_protocols",
                                                           "tls_params"),
                   refuse=("tls_certificate_sds_secret_configs", "validation_context"))
    certs = r.items(cc or {}, ccpath, "tls_certificates", required=True)
    if len(certs) != 1:
        r.error(join(ccpath, "tls_certificates"), "expected exactly one certificate")
        return None
    cp, c = certs[0]
    co = r.mapping(c, cp, ("certificate_chain", "private_key"))
    if co is None:
        return None
    chain = _file_source(r, co.get("certificate_chain"), join(cp, "certificate_chain"))
    key = _file_source(r, co.get("private_key"), join(cp, "private_key"))
    return _loads(r, path, chain, key)
