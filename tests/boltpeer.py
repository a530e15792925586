"""A bolt v1 client and server for tests, written from the SOFABolt wire format with struct
(independent of greenmesh's codec)."""

from __future__ import annotations

import socket
import struct
import threading
import time

from tests.harness import LoopbackServer

REQ = struct.Struct(">BBHBIBiHHI")  # proto type cmdcode ver2 id codec timeout cls hdr content
RESP = struct.Struct(">BBHBIBHHHI")  # proto type cmdcode ver2 id codec status cls hdr content
REQ_CLASS = b"com.alipay.sofa.rpc.core.request.SofaRequest"
RESP_CLASS = b"com.alipay.sofa.rpc.core.response.SofaResponse"


def header_map(pairs: dict[str, str]) -> bytes:
    out = b""
    for k, v in pairs.items():
        kb, vb = k.encode(), v.encode()
        out += struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb
    return out


def parse_header_map(raw: bytes) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(raw):
        (klen,) = struct.unpack_from(">I", raw, pos)
        key = raw[pos + 4:pos + 4 + klen]
        pos += 4 + klen
        (vlen,) = struct.unpack_from(">I", raw, pos)
        out.append((key.decode(), raw[pos + 4:pos + 4 + vlen].decode()))
        pos += 4 + vlen
    return out


def request(rid: int, content: bytes, service: str = "com.example.EchoService:1.0",
            method: str = "echo", app: str | None = None, oneway: bool = False,
            extra: dict[str, str] | None = None) -> bytes:
    headers = {"service": service, "sofa_head_target_service": service,
               "sofa_head_method_name": method, **(extra or {})}
    if app:
        headers["sofa_head_target_app"] = app
    hdr = header_map(headers)
    return REQ.pack(1, 2 if oneway else 1, 1, 1, rid, 1, 3000, len(REQ_CLASS), len(hdr),
                    len(content)) + REQ_CLASS + hdr + content


def heartbeat(rid: int) -> bytes:
    return REQ.pack(1, 1, 0, 1, rid, 1, -1, 0, 0, 0)


def response(rid: int, content: bytes, status: int = 0, cmdcode: int = 2) -> bytes:
    return RESP.pack(1, 0, cmdcode, 1, rid, 1, status, len(RESP_CLASS) if content else 0, 0,
                     len(content)) + (RESP_CLASS if content else b"") + content


def parse(buf: bytearray) -> list[dict]:
    """Takes whole frames off the front of buf."""
    frames = []
    while len(buf) >= 2:
        is_req = buf[1] in (1, 2)
        hdr = REQ if is_req else RESP
        if len(buf) < hdr.size:
            break
        f = hdr.unpack_from(buf)
        cls, hlen, clen = f[7], f[8], f[9]
        total = hdr.size + cls + hlen + clen
        if len(buf) < total:
            break
        body = bytes(buf[hdr.size + cls + hlen:total])
        frames.append({"request": is_req, "type": f[1], "cmdcode": f[2], "id": f[4],
                       "status": None if is_req else f[6], "content": body,
                       "raw_headers": bytes(buf[hdr.size + cls:hdr.size + cls + hlen])})
        del buf[:total]
    return frames


class BoltServer(LoopbackServer):
    """Echoes ``content`` back as ``echo:`` + content; a content of ``sleep:S:...`` answers
    after S seconds (out of order on purpose). Records what it saw."""

    def __init__(self, answer_heartbeats: bool = True):
        self.answer_heartbeats = answer_heartbeats
        self.requests: list[int] = []
        self.headers: list[list[tuple[str, str]]] = []  # each request's header map
        self.heartbeats = 0
        self.oneways = 0
        self.replies = 0  # responses written (late ones included)
        self.hung_up = 0  # connections the client (greenmesh) closed
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        lock = threading.Lock()
        buf = bytearray()

        def reply(data: bytes) -> None:
            with lock:
                try:
                    conn.sendall(data)
                    self.replies += 1
                except OSError:
                    pass
        try:
            while data := conn.recv(65536):
                buf += data
                for f in parse(buf):
                    if f["cmdcode"] == 0:
                        self.heartbeats += 1
                        if self.answer_heartbeats:
                            reply(response(f["id"], b"", cmdcode=0))
                        continue
                    if f["type"] == 2:
                        self.oneways += 1
                        continue
                    self.requests.append(f["id"])
                    self.headers.append(parse_header_map(f["raw_headers"]))
                    content = f["content"]
                    if content.startswith(b"sleep:"):
                        delay = float(content.split(b":")[1])
                        threading.Timer(delay, reply, (response(f["id"], b"echo:" + content),)
                                        ).start()
                    else:
                        reply(response(f["id"], b"echo:" + content))
            self.hung_up += 1
        except OSError:
            pass



class BoltClient:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = bytearray()

    def send(self, data: bytes, chunk: int = 0) -> None:
        if chunk:
            for i in range(0, len(data), chunk):  # tiny TCP segments
                self.sock.sendall(data[i:i + chunk])
                time.sleep(0.001)
        else:
            self.sock.sendall(data)

    def receive(self, count: int, timeout: float = 10) -> list[dict]:
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
            out += parse(self.buf)
        return out

    def close(self) -> None:
        self.sock.close()
