"""bolt load: N connections, each keeping M requests in flight for S seconds; prints JSON with
requests/s and latency percentiles. ``bolt_load.py PORT N M S``"""

from gevent import monkey

monkey.patch_all()
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from boltwire import frames, request  # noqa: E402


def worker(port: int, in_flight: int, deadline: float, latencies: list) -> int:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent: dict[int, float] = {}
    next_id, done = 1, 0
    now = time.monotonic()
    batch = []
    for _ in range(in_flight):
        sent[next_id] = now
        batch.append(request(next_id))
        next_id += 1
    s.sendall(b"".join(batch))
    buf = bytearray()
    while time.monotonic() < deadline:
        data = s.recv(262144)
        if not data:
            break
        buf += data
        found, used = frames(buf)
        now = time.monotonic()
        batch = []
        for _, _, rid, _, _ in found:
            latencies.append(now - sent.pop(rid))
            done += 1
            sent[next_id] = now
            batch.append(request(next_id))
            next_id += 1
        del buf[:used]
        if batch:
            s.sendall(b"".join(batch))
    s.close()
    return done


def main() -> None:
    port, conns, in_flight, seconds = (int(a) for a in sys.argv[1:5])
    latencies: list[float] = []
    start = time.monotonic()
    deadline = start + seconds
    jobs = [gevent.spawn(worker, port, in_flight, deadline, latencies) for _ in range(conns)]
    gevent.joinall(jobs)
    elapsed = time.monotonic() - start
    total = sum(j.value or 0 for j in jobs)
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1000 if latencies \
            else 0.0
    print(json.dumps({"rps": total / elapsed, "p50": pick(0.5), "p99": pick(0.99),
                      "requests": total,
                      "errors": "" if all(j.successful() for j in jobs) else "worker failed"}))


if __name__ == "__main__":
    main()
