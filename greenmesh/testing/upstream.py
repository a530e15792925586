"""A small HTTP/1.1 upstream for demos and tests: ``python -m greenmesh.testing.upstream PORT``.

Built on gevent's WSGI server (not on greenmesh), so tests exercise greenmesh against an
independent implementation. Its paths make an upstream misbehave on purpose:
``/echo`` (the request back, as JSON headers + body), ``/bytes/N`` (N bytes, streamed),
``/delay/S`` (answer after S seconds), ``/status/N``, ``/close`` (reset without answering),
``/ws`` (a WebSocket-style echo after a 101), anything else: a greeting with the server's name.
"""

from __future__ import annotations

from gevent import monkey

if __name__ == "__main__":
    monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

NAME = os.environ.get("UPSTREAM_NAME", "upstream")


class Handler(WSGIHandler):
    """Counts connections, so tests can see keep-alive reuse from the upstream's side."""

    def handle(self):
        self.server.connections += 1
        # pywsgi writes head and body separately: without NODELAY the body waits for the
        # proxy's delayed ACK (40 ms), as with any Nagle-bound server.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return super().handle()

    def handle_one_response(self):
        """/close and /ws take the socket over, below WSGI."""
        path = self.environ["PATH_INFO"]
        if path == "/close":  # reset: SO_LINGER 0 turns the close into an RST
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif path == "/ws" and self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            self.socket.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\n\r\n")
            while data := self.socket.recv(65536):
                self.socket.sendall(data.upper())  # an echo that shows it passed through
        else:
            return super().handle_one_response()
        self.close_connection = True
        self.rfile.close()
        self.socket.close()

    def get_environ(self):
        env = super().get_environ()
        env["upstream.connections"] = self.server.connections
        env["upstream.socket"] = self.socket
        return env


def app(environ, start_response):
    path = environ["PATH_INFO"]
    headers = [("x-upstream", NAME), ("x-upstream-connections", str(environ["upstream.connections"]))]
    if path == "/echo" or path.startswith("/echo/"):
        body = environ["wsgi.input"].read()
        req_headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items()
                       if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            req_headers["content-type"] = environ["CONTENT_TYPE"]
        meta = json.dumps({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                           "query": environ.get("QUERY_STRING", ""), "headers": req_headers,
                           "body_length": len(body)})
        start_response("200 OK", headers + [("content-type", "application/json"),
                                            ("x-echo-meta", str(len(meta)))])
        return [meta.encode(), b"\n", body]
    if path == "/sink":  # reads the body in pieces and answers with its length (bounded memory)
        total = 0
        inp = environ["wsgi.input"]
        while chunk := inp.read(65536):
            total += len(chunk)
        start_response("200 OK", headers + [("content-type", "text/plain")])
        return [f"{total}\n".encode()]
    if path.startswith("/bytes/"):
        n = int(path.rsplit("/", 1)[1])
        start_response("200 OK", headers + [("content-type", "application/octet-stream")])
        block = b"x" * 65536

        def gen():
            left = n
            while left > 0:
                yield block[:left]
                left -= len(block)
        return gen()
    if path.startswith("/delay/"):
        gevent.sleep(float(path.rsplit("/", 1)[1]))
        start_response("200 OK", headers + [("content-type", "text/plain")])
        return [b"late\n"]
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        start_response(f"{code} Status", headers + [("content-type", "text/plain")])
        return [b""] if code in (204, 304) else [f"status {code}\n".encode()]
    body = f"hello from {NAME}\n".encode()
    start_response("200 OK", headers + [("content-type", "text/plain"),
                                        ("content-length", str(len(body)))])
    # pywsgi would send the body even to a HEAD request: leave it out here.
    return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


def serve(port: int, host: str = "127.0.0.1") -> WSGIServer:
    # A deep accept queue: a test may open hundreds of connections at once, and a SYN dropped
    # on a full queue is only retried after a second.
    server = WSGIServer((host, port), app, handler_class=Handler, log=None, error_log=None,
                        backlog=1024)
    server.connections = 0  # type: ignore[attr-defined]  # counted by Handler
    server.start()
    return server


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
    sys.stderr.write(f"{NAME} listening\n")
    gevent.wait()
