"""An application embedding a mesh and calling through ``mesh.http``, for the in-process tests
that need a process of their own: ``python -m tests.inprocess_app stream UPSTREAM BYTES`` (how
far memory grows with a large body each way) and ``... xds CP_PORT`` (prints what a call gets
each time it changes, as routes come from the control plane)."""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from greenmesh.client.errors import MeshError  # noqa: E402
from greenmesh.config import load_dict  # noqa: E402
from greenmesh.mesh import Mesh  # noqa: E402
from tests.harness import rss_kb  # noqa: E402


def stream(upstream: str, size: int) -> None:
    mesh = Mesh(load_dict({
        "route_configs": [{"name": "outbound", "virtual_hosts": [{
            "name": "svc", "domains": ["svc"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "120s"}}]}]}],
        "clusters": [{"name": "c", "endpoints": [upstream]}]})).start()
    mesh.http.get("http://svc/bytes/1000000")  # warm up pools and code paths
    mesh.http.post("http://svc/sink", data=iter([b"w" * 65536] * 16))
    base = rss_kb(os.getpid())
    block = b"u" * (1 << 20)

    def upload():
        for _ in range(size // len(block)):
            yield block
    sent = mesh.http.post("http://svc/sink", data=upload()).text.strip()
    resp = mesh.http.get(f"http://svc/bytes/{size}", stream=True)
    gevent.sleep(0.5)  # a slow reader at first: the mesh must not buffer ahead of it
    received = sum(len(chunk) for chunk in resp.iter_content())
    grew = rss_kb(os.getpid(), "VmHWM") - base
    mesh.stop(timeout=1)
    print(json.dumps({"sent": sent, "received": received, "grew_kb": grew}))


def xds(cp_port: int) -> None:
    mesh = Mesh(load_dict({"xds": {"server": f"127.0.0.1:{cp_port}", "node": {"id": "app"},
                                   "initial_fetch_timeout": "1s"}})).start()
    last = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            now = mesh.http.get("http://svc/", timeout=2).headers.get("x-upstream")
        except MeshError as e:
            now = ",".join(f.value for f in e.flags)
        if now != last:
            print(now, flush=True)
            last = now
        gevent.sleep(0.02)
    mesh.stop(timeout=1)


if __name__ == "__main__":
    if sys.argv[1] == "stream":
        stream(sys.argv[2], int(sys.argv[3]))
    else:
        xds(int(sys.argv[2]))
