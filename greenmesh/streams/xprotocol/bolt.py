"""SOFA bolt v1 (SOFARPC's protocol), from the public SOFABolt wire format.

Request header, 22 bytes: proto(1)=1, type(1) 1 request/2 oneway, cmdcode(2) 0 heartbeat/1
request, ver2(1)=1, request id(4), codec(1), timeout(4, ms, -1 none), class length(2), header
length(2), content length(4). Response header, 20 bytes: the same to codec, then status(2),
class length(2), header length(2), content length(4). Then class name, header map (pairs of
uint32 length + bytes), content. Big-endian throughout.
"""

from __future__ import annotations

import struct
from typing import Final

from greenmesh.failures import ResponseFlag
from greenmesh.streams import Match, Protocol
from greenmesh.streams.base import Headers
from greenmesh.streams.xprotocol import MAX_FRAME, CodecError, XCodec, XFrame

REQUEST: Final = struct.Struct(">BBHBIBiHHI")
RESPONSE: Final = struct.Struct(">BBHBIBHHHI")
_ID: Final = struct.Struct(">I")
PROTO_V1: Final = 1
TYPE_RESPONSE: Final = 0
TYPE_REQUEST: Final = 1
TYPE_ONEWAY: Final = 2
CMD_HEARTBEAT: Final = 0
CMD_REQUEST: Final = 1
CMD_RESPONSE: Final = 2
HESSIAN2: Final = 1

# SOFABolt ResponseStatus
SUCCESS: Final = 0
ERROR: Final = 1
SERVER_EXCEPTION: Final = 2
UNKNOWN: Final = 3
SERVER_BUSY: Final = 4
ERROR_COMM: Final = 5
NO_PROCESSOR: Final = 6
TIMEOUT: Final = 7
CODEC_EXCEPTION: Final = 9
CONNECTION_CLOSED: Final = 0x10

# Why greenmesh answers -> what a bolt client reads (MOSN's mapping, with upstream connection
# failures told apart from a missing route).
_FLAG_STATUS: Final = {
    ResponseFlag.NO_ROUTE_FOUND: NO_PROCESSOR,
    ResponseFlag.NO_CLUSTER_FOUND: NO_PROCESSOR,
    ResponseFlag.NO_HEALTHY_UPSTREAM: NO_PROCESSOR,
    ResponseFlag.UPSTREAM_OVERFLOW: SERVER_BUSY,
    ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR: CODEC_EXCEPTION,
    ResponseFlag.UPSTREAM_REQUEST_TIMEOUT: TIMEOUT,
    ResponseFlag.STREAM_IDLE_TIMEOUT: TIMEOUT,
    ResponseFlag.DURATION_TIMEOUT: TIMEOUT,
    ResponseFlag.UPSTREAM_CONNECTION_FAILURE: ERROR_COMM,
    ResponseFlag.UPSTREAM_CONNECTION_TERMINATION: ERROR_COMM,
    ResponseFlag.UPSTREAM_PROTOCOL_ERROR: ERROR_COMM,
    ResponseFlag.INTERNAL_ERROR: SERVER_EXCEPTION,
    ResponseFlag.RATE_LIMITED: SERVER_BUSY,
}
_HTTP_STATUS: Final = {SUCCESS: 200, SERVER_BUSY: 503, TIMEOUT: 504, NO_PROCESSOR: 404,
                       CONNECTION_CLOSED: 502, ERROR_COMM: 502}
STATUS_FROM_HTTP: Final = {200: SUCCESS, 404: NO_PROCESSOR, 429: SERVER_BUSY,
                             500: SERVER_EXCEPTION, 502: ERROR_COMM, 503: SERVER_BUSY,
                             504: TIMEOUT}


class BoltFrame(XFrame):
    __slots__ = ("kind", "cmdcode", "codec", "timeout_or_status", "header_start", "header_len",
                 "_pairs", "_headers")

    def __init__(self, raw: bytes, fields: tuple, header_start: int):
        _, kind, cmdcode, _, request_id, codec, tos, class_len, header_len, _ = fields
        self.raw = raw
        self.kind = kind
        self.cmdcode = cmdcode
        self.request_id = request_id
        self.codec = codec
        self.timeout_or_status = tos
        self.is_request = kind != TYPE_RESPONSE
        self.oneway = kind == TYPE_ONEWAY
        self.heartbeat = cmdcode == CMD_HEARTBEAT
        self.header_start = header_start + class_len
        self.header_len = header_len
        self._pairs: Headers | None = None  # names in their own case
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        """The header map, decoded on first use (routing needs it; forwarding does not)."""
        if self._headers is None:
            self._headers = [(k.lower(), v) for k, v in self.pairs]
        return self._headers

    @property
    def pairs(self) -> Headers:
        if self._pairs is None:
            self._pairs = _decode_header_map(self.raw, self.header_start, self.header_len,
                                             self.request_id)
        return self._pairs

    def get(self, key: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == key:
                return v
        return None

    @property
    def class_name(self) -> bytes:
        return self.raw[(REQUEST if self.is_request else RESPONSE).size:self.header_start]

    @property
    def content(self) -> bytes:
        """The payload after the header map (the serialized request or response object)."""
        return self.raw[self.header_start + self.header_len:]

    @property
    def status(self) -> int:
        """A response's ResponseStatus (SUCCESS is 0)."""
        return self.timeout_or_status


def _decode_header_map(raw: bytes, start: int, length: int, request_id: int) -> Headers:
    out: Headers = []
    pos, end = start, start + length
    try:
        while pos < end:
            (klen,) = _ID.unpack_from(raw, pos)
            key = raw[pos + 4:pos + 4 + klen]
            pos += 4 + klen
            (vlen,) = _ID.unpack_from(raw, pos)
            value = raw[pos + 4:pos + 4 + vlen]
            pos += 4 + vlen
            out.append((key, value))
    except struct.error:
        raise CodecError("bad bolt header map", request_id) from None
    if pos != end:
        raise CodecError("bolt header map overruns its length", request_id)
    return out


def _encode_header_map(headers: Headers, case: dict[bytes, bytes]) -> bytes:
    out = []
    for name, value in headers:
        name = case.get(name, name)
        out.append(_ID.pack(len(name)))
        out.append(name)
        out.append(_ID.pack(len(value)))
        out.append(value)
    return b"".join(out)


#: SOFARPC's request class, what a bolt request's class name says unless told otherwise.
SOFA_REQUEST: Final = b"com.alipay.sofa.rpc.core.request.SofaRequest"


def request_frame(service: bytes, method: bytes, content: bytes, headers: Headers,
                  target_app: bytes = b"", timeout_ms: int = -1, oneway: bool = False,
                  class_name: bytes = SOFA_REQUEST, codec: int = HESSIAN2) -> BoltFrame:
    """A request frame made in Python (the in-process ``mesh.bolt``), with SOFARPC's header
    keys for the service, the method and the target app before ``headers``."""
    pairs = [(b"service", service), (b"sofa_head_target_service", service),
             (b"sofa_head_method_name", method)]
    if target_app:
        pairs.append((b"sofa_head_target_app", target_app))
    header_map = _encode_header_map([*pairs, *headers], {})
    raw = b"".join((REQUEST.pack(PROTO_V1, TYPE_ONEWAY if oneway else TYPE_REQUEST, CMD_REQUEST,
                                 1, 1, codec, timeout_ms, len(class_name), len(header_map),
                                 len(content)), class_name, header_map, content))
    return BoltFrame(raw, REQUEST.unpack_from(raw), REQUEST.size)


class BoltCodec(XCodec[BoltFrame]):
    name = "bolt"

    def match(self, data: bytes) -> Match:
        """More than the first byte (MOSN checks only that, so HTTP bodies starting 0x01 and
        bolt can be confused): protocol, type, command code and version must all fit."""
        n = len(data)
        if n == 0:
            return Match.AGAIN
        if data[0] != PROTO_V1:
            return Match.NO
        if n < 2:
            return Match.AGAIN
        if data[1] not in (TYPE_REQUEST, TYPE_ONEWAY):  # a client speaks first, with requests
            return Match.NO
        if n < 4:
            return Match.AGAIN
        if int.from_bytes(data[2:4], "big") not in (CMD_HEARTBEAT, CMD_REQUEST):
            return Match.NO
        if n < 5:
            return Match.AGAIN
        return Match.YES if data[4] == 1 else Match.NO

    def decode(self, buf: bytearray, offset: int, limit: int = MAX_FRAME
               ) -> tuple[BoltFrame | None, int]:
        available = len(buf) - offset
        if available < 2:
            return None, offset
        if buf[offset] != PROTO_V1:
            raise CodecError(f"not bolt v1 (protocol byte {buf[offset]:#x})")
        kind = buf[offset + 1]
        if kind == TYPE_RESPONSE:
            header = RESPONSE
        elif kind in (TYPE_REQUEST, TYPE_ONEWAY):
            header = REQUEST
        else:
            raise CodecError(f"unknown bolt command type {kind}")
        if available < header.size:
            return None, offset
        fields = header.unpack_from(buf, offset)
        cmdcode, request_id = fields[2], fields[4]
        if cmdcode not in ((CMD_HEARTBEAT, CMD_RESPONSE) if kind == TYPE_RESPONSE
                           else (CMD_HEARTBEAT, CMD_REQUEST)):
            raise CodecError(f"bad bolt command code {cmdcode}", request_id)
        total = header.size + fields[7] + fields[8] + fields[9]
        if total > limit:
            raise CodecError(f"bolt frame of {total} bytes is over the limit of {limit}",
                             request_id)
        if available < total:
            return None, offset
        raw = bytes(buf[offset:offset + total])
        return BoltFrame(raw, fields, header.size), offset + total

    def encode(self, frame: BoltFrame, request_id: int, headers: Headers | None = None
               ) -> bytes | bytearray:
        raw = frame.raw
        if headers is None:
            out = bytearray(raw)
            _ID.pack_into(out, 5, request_id)
            return out
        layout = REQUEST if frame.is_request else RESPONSE
        fields = list(layout.unpack_from(raw))
        header_map = _encode_header_map(headers, {k.lower(): k for k, _ in frame.pairs})
        fields[4], fields[8] = request_id, len(header_map)
        end = frame.header_start + frame.header_len
        return b"".join((layout.pack(*fields), raw[layout.size:frame.header_start], header_map,
                         raw[end:]))

    def heartbeat(self, request_id: int) -> bytes:
        return REQUEST.pack(PROTO_V1, TYPE_REQUEST, CMD_HEARTBEAT, 1, request_id, HESSIAN2, -1,
                            0, 0, 0)

    def heartbeat_reply(self, frame: BoltFrame) -> bytes:
        return RESPONSE.pack(PROTO_V1, TYPE_RESPONSE, CMD_HEARTBEAT, 1, frame.request_id,
                             frame.codec, SUCCESS, 0, 0, 0)

    def error_response(self, request_id: int, flag: ResponseFlag | None, status: int,
                       request: BoltFrame | None = None) -> bytes:
        codec = request.codec if request is not None else HESSIAN2
        # The flag says why when it has a bolt status of its own; else the HTTP status does
        # (a fault filter's abort, a filter's own reply).
        code = _FLAG_STATUS.get(flag, -1) if flag is not None else -1
        if code < 0:
            code = STATUS_FROM_HTTP.get(status, UNKNOWN)
        return RESPONSE.pack(PROTO_V1, TYPE_RESPONSE, CMD_RESPONSE, 1, request_id, codec, code,
                             0, 0, 0)

    def route_info(self, frame: BoltFrame) -> tuple[bytes, bytes, bytes]:
        service = frame.get(b"service") or frame.get(b"sofa_head_target_service") or b""
        return (service, frame.get(b"sofa_head_method_name") or b"",
                frame.get(b"sofa_head_target_app") or b"")

    def http_status(self, response: BoltFrame) -> int:
        return _HTTP_STATUS.get(response.timeout_or_status, 500)


def _protocol() -> Protocol:
    from greenmesh.streams.xprotocol.stream import make_protocol
    return make_protocol(BoltCodec())


PROTOCOL: Final = _protocol()
