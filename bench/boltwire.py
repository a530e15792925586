"""bolt v1 frames for the benchmark peers: prebuilt, ids patched in place, parsed in batches."""

from __future__ import annotations

import struct

REQ = struct.Struct(">BBHBIBiHHI")
RESP = struct.Struct(">BBHBIBHHHI")
_ID = struct.Struct(">I")
_CLASS = b"com.alipay.sofa.rpc.core.request.SofaRequest"


def _map(pairs: dict[bytes, bytes]) -> bytes:
    return b"".join(_ID.pack(len(k)) + k + _ID.pack(len(v)) + v for k, v in pairs.items())


_HEADERS = _map({b"service": b"com.example.EchoService:1.0", b"sofa_head_method_name": b"echo"})
_CONTENT = b"x" * 64
REQUEST = REQ.pack(1, 1, 1, 1, 0, 1, 3000, len(_CLASS), len(_HEADERS), len(_CONTENT)) + \
    _CLASS + _HEADERS + _CONTENT


def request(rid: int) -> bytearray:
    frame = bytearray(REQUEST)
    _ID.pack_into(frame, 5, rid)
    return frame


def frames(buf: bytearray):
    """(is_request, cmdcode, id, start, end) of each whole frame in buf, and the bytes used."""
    out, off, n = [], 0, len(buf)
    while n - off >= 2:
        hdr = REQ if buf[off + 1] else RESP
        if n - off < hdr.size:
            break
        f = hdr.unpack_from(buf, off)
        end = off + hdr.size + f[7] + f[8] + f[9]
        if end > n:
            break
        out.append((hdr is REQ, f[2], f[4], off + hdr.size + f[7] + f[8], end))
        off = end
    return out, off


def response(rid: int, cmdcode: int, content: bytes) -> bytes:
    return RESP.pack(1, 0, cmdcode, 1, rid, 1, 0, 0, 0, len(content)) + content
