"""TLS contexts for listeners and clusters (gevent's cooperative ssl), with ALPN."""

from __future__ import annotations

from gevent import ssl

from greenmesh import model


def server_context(cfg: model.TlsServer, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.certificate_chain, cfg.private_key)
    ctx.set_alpn_protocols(alpn)
    return ctx


def client_context(cfg: model.TlsClient, alpn: list[str]) -> ssl.SSLContext:
    if cfg.ca:
        ctx = ssl.create_default_context(cafile=cfg.ca)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(alpn)
    return ctx
