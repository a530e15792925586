"""The two services etc/examples/gateway.py calls: ``users`` over HTTP/1.1 (greenmesh's demo
upstream) and ``search`` over HTTP/2 cleartext (h2c, with the ``h2`` library):

    python etc/examples/services.py [USERS_PORT [SEARCH_PORT]]      # 8080 and 8081
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

from greenmesh.testing import upstream  # noqa: E402


def search(sock, address) -> None:
    """One h2c connection: each request gets JSON saying what it asked, over which protocol."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    heads: dict[int, dict] = {}
    bodies: dict[int, bytes] = {}
    while data := sock.recv(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                heads[event.stream_id] = dict(event.headers)
                bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                answer = json.dumps({"protocol": "HTTP/2", "path": heads[sid][":path"],
                                     "asked": json.loads(bodies[sid] or b"null"),
                                     "results": ["a", "b", "c"]}).encode()
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                        ("content-length", str(len(answer)))])
                conn.send_data(sid, answer, end_stream=True)
                del heads[sid], bodies[sid]
        sock.sendall(conn.data_to_send())


if __name__ == "__main__":
    users_port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    search_port = int(sys.argv[2]) if len(sys.argv) > 2 else 8081
    os.environ.setdefault("UPSTREAM_NAME", "users")
    upstream.NAME = os.environ["UPSTREAM_NAME"]
    upstream.serve(users_port)
    StreamServer(("127.0.0.1", search_port), search).start()
    sys.stderr.write(f"users on 127.0.0.1:{users_port} (HTTP/1.1), "
                     f"search on 127.0.0.1:{search_port} (h2c)\n")
    gevent.wait()
