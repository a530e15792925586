"""HTTP semantics shared by every HTTP codec (HTTP/1.1 now, HTTP/2 next): written once here."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from greenmesh.failures import LocalReply
from greenmesh.streams.base import Headers, ResponseHead, ServerStream

REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}

# Envoy's list: these describe one hop and never cross the proxy. ``expect`` goes too: greenmesh
# answers ``100-continue`` itself once it is ready for the body, as Envoy does by default.
HOP_BY_HOP: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                               b"transfer-encoding", b"te", b"trailer", b"upgrade", b"expect",
                               b"host"))


def clean_request_headers(headers: Headers, peer_ip: bytes | None, scheme: bytes,
                          ) -> tuple[Headers, bytes, bytes]:
    """Drops hop-by-hop headers (and those ``Connection`` names), adds x-forwarded-*.

    Returns the new header list, the ``Host`` value and the ``Upgrade`` protocol asked for
    (each ``b""`` when absent): one pass over the headers, since this runs per request.
    """
    out: Headers = []
    host = upgrade = b""
    connection = b""
    te_trailers = False
    xff = None
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection":
                connection = value.lower()
            elif name == b"upgrade":
                upgrade = value
            elif name == b"host":
                host = value
            elif name == b"te":
                te_trailers = b"trailers" in value.lower()
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if name == b"x-forwarded-proto":
            continue
        out.append((name, value))
    if connection:
        tokens = {t.strip() for t in connection.split(b",")}
        if b"upgrade" not in tokens:
            upgrade = b""
        tokens.discard(b"upgrade")
        tokens.discard(b"close")
        tokens.discard(b"keep-alive")
        if tokens:
            out = [(n, v) for n, v in out if n not in tokens]
    else:
        upgrade = b""
    if te_trailers:
        out.append((b"te", b"trailers"))  # gRPC needs it, and it is end to end in meaning
    if peer_ip is not None:
        xff = peer_ip if xff is None else xff + b", " + peer_ip
    if xff is not None:
        out.append((b"x-forwarded-for", xff))
    out.append((b"x-forwarded-proto", scheme))
    return out, host, upgrade


RESPONSE_HOP_BY_HOP: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                        b"transfer-encoding", b"upgrade", b"trailer"))


def clean_response_headers(headers: Headers) -> Headers:
    """Drops the hop-by-hop headers of a response, and those its ``Connection`` names."""
    named: set[bytes] = set()
    out: Headers = []
    for name, value in headers:
        if name in RESPONSE_HOP_BY_HOP:
            if name == b"connection":
                named.update(t.strip() for t in value.lower().split(b","))
            continue
        out.append((name, value))
    named -= {b"close", b"keep-alive", b"upgrade"}
    if named:
        out = [(n, v) for n, v in out if n not in named]
    return out


def local_reply_headers(body: bytes, content_type: bytes = b"text/plain") -> Headers:
    return [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]


# Envoy's Grpc::Utility::httpToGrpcStatus: what a gRPC client is told for greenmesh's own HTTP
# status (anything else: UNKNOWN).
_GRPC_STATUS: Final = {400: b"13", 401: b"16", 403: b"7", 404: b"12", 429: b"14", 502: b"14",
                       503: b"14", 504: b"14"}
_GRPC_MESSAGE_SAFE: Final = frozenset(range(0x20, 0x7F)) - {ord("%")}


def _grpc_message(body: bytes) -> bytes:
    """gRPC's percent-encoding of grpc-message (printable ASCII but ``%`` as is)."""
    text = body.strip()
    return b"".join(bytes((c,)) if c in _GRPC_MESSAGE_SAFE else b"%%%02X" % c for c in text)


def send_http_local_reply(stream: ServerStream, reply: LocalReply) -> int:
    """An HTTP server stream's local reply: the status, a text body and its length. A gRPC
    request gets it as gRPC says errors (Envoy's local reply for gRPC): HTTP 200, trailers-only,
    grpc-status mapped from the status and the body as grpc-message."""
    ctype = stream.request.get(b"content-type")
    if ctype is not None and ctype.startswith(b"application/grpc"):
        head = ResponseHead(200, [(b"content-type", b"application/grpc"),
                                  (b"grpc-status", _GRPC_STATUS.get(reply.status, b"2")),
                                  (b"grpc-message", _grpc_message(reply.body)),
                                  *reply.headers], b"OK")
        stream.send_headers(head, end_stream=True)
        return 0
    body = reply.body if stream.request.method != b"HEAD" else b""
    head = ResponseHead(reply.status, local_reply_headers(reply.body) + list(reply.headers),
                        REASONS.get(reply.status, b""))
    stream.send_headers(head, end_stream=not body)
    if body:
        stream.send_data(body, end_stream=True)
    return len(body)
