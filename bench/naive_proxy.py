"""The floor: a deliberately naive gevent + h11 reverse proxy (one upstream connection per
downstream connection, no routing, no pooling, no logging). ``naive_proxy.py LISTEN UPSTREAM``"""

from gevent import monkey

monkey.patch_all()
import socket  # noqa: E402
import sys  # noqa: E402

import h11  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

UPSTREAM = ("127.0.0.1", int(sys.argv[2]))


def next_event(conn: h11.Connection, sock: socket.socket):
    while (ev := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(sock.recv(65536))
    return ev


def handle(sock, _addr):
    up = socket.create_connection(UPSTREAM)
    server, client = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    try:
        while type(req := next_event(server, sock)) is h11.Request:
            out = [client.send(h11.Request(method=req.method, target=req.target, headers=req.headers))]
            while type(ev := next_event(server, sock)) is h11.Data:
                out.append(client.send(ev))
            up.sendall(b"".join(out) + client.send(h11.EndOfMessage()))
            resp = next_event(client, up)
            out = [server.send(h11.Response(status_code=resp.status_code, headers=resp.headers))]
            while type(ev := next_event(client, up)) is h11.Data:
                out.append(server.send(ev))
            sock.sendall(b"".join(out) + server.send(h11.EndOfMessage()))
            server.start_next_cycle()
            client.start_next_cycle()
    except (OSError, h11.ProtocolError):
        pass
    finally:
        sock.close()
        up.close()


StreamServer(("127.0.0.1", int(sys.argv[1])), handle).serve_forever()
