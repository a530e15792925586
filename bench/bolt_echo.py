"""A batched bolt echo server: every frame of a read parsed in one loop, all replies in one
write (the baselines' 'batching is the lever'). ``bolt_echo.py PORT``"""

from gevent import monkey

monkey.patch_all()
import socket  # noqa: E402
import sys  # noqa: E402

from boltwire import frames, response  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


def handle(sock, _addr):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    try:
        while data := sock.recv(262144):
            buf += data
            found, used = frames(buf)
            if found:
                sock.sendall(b"".join(response(rid, 2 if cmd else 0, bytes(buf[a:b]) if cmd else b"")
                                      for _, cmd, rid, a, b in found))
                del buf[:used]
    except OSError:
        pass
    finally:
        sock.close()


StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=1024).serve_forever()
