"""greenmesh as a library: importing patches nothing; a Mesh starts and stops in a running
gevent process, twice, leaving no greenlet, socket or module state behind; and it runs inside a
gunicorn-gevent worker."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.harness import ROOT, free_port, http_text, until, wait_port

IMPORT_CHECK = """
import threading
import greenmesh, greenmesh.mesh, greenmesh.cli, greenmesh.streams.http1, greenmesh.testing.upstream
from gevent import monkey
from gevent._hub_local import get_hub_if_exists
assert not monkey.saved, monkey.saved
assert not monkey.is_module_patched("socket")
assert get_hub_if_exists() is None, "a hub was created at import"
assert threading.active_count() == 1
print("clean")
"""

TWICE = """
import gc, os, sys
import gevent, greenlet
from gevent import socket
from greenmesh.config import load_dict
from greenmesh.mesh import Mesh
from greenmesh.testing.upstream import serve

up = serve(0)
listen_port, admin_port = int(sys.argv[1]), int(sys.argv[2])
config = load_dict({
    "admin": {"address": f"127.0.0.1:{admin_port}"},
    "listeners": [{"name": "l", "address": f"127.0.0.1:{listen_port}", "route_config": "r"}],
    "route_configs": [{"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"],
                       "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}],
    "clusters": [{"name": "c", "endpoints": [f"127.0.0.1:{up.server_port}"]}],
})

def fds():
    return len(os.listdir("/proc/self/fd"))

def live_greenlets():
    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]

def get(port, path="/"):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n".encode())
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out

baseline_fds, baseline_greenlets = fds(), len(live_greenlets())
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0.01) for _ in range(10**9)])
for round in range(2):
    mesh = Mesh(config).start()
    # a keep-alive client left open at stop time must not keep the mesh from stopping
    idle = socket.create_connection(("127.0.0.1", listen_port))
    replies = gevent.joinall([gevent.spawn(get, listen_port) for _ in range(20)])
    assert all(g.value.startswith(b"HTTP/1.1 200") for g in replies)
    assert get(admin_port, "/ready").endswith(b"LIVE\\n")
    mesh.stop(timeout=2)
    assert idle.recv(10) == b""
    idle.close()
    try:
        socket.create_connection(("127.0.0.1", listen_port), timeout=1)
        raise AssertionError("listener still accepting after stop")
    except ConnectionRefusedError:
        pass
    def left():
        gc.collect()
        return [g for g in live_greenlets() if g is not ticker]
    # What stop() killed without blocking ends within a turn or two of the loop.
    for _ in range(200):
        if fds() == baseline_fds and len(left()) == baseline_greenlets:
            break
        gevent.sleep(0.01)
    assert fds() == baseline_fds, (round, fds(), baseline_fds)
    assert len(left()) == baseline_greenlets, (round, left())
for _ in range(500):  # the host's own greenlet runs beside the mesh, and after it
    if len(ticks) > 5:
        break
    gevent.sleep(0.01)
ticker.kill()
assert len(ticks) > 5, "the host process's own greenlets starved"
up.stop()
print("ok")
"""


def run_py(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_import_patches_and_starts_nothing():
    r = run_py(IMPORT_CHECK)
    assert r.returncode == 0 and r.stdout == "clean\n", r.stderr


def test_mesh_starts_and_stops_twice_in_one_gevent_process():
    r = run_py(TWICE, str(free_port()), str(free_port()))
    assert r.returncode == 0 and r.stdout.endswith("ok\n"), r.stdout + r.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_embedded_in_gunicorn_gevent_workers(tmp_path, workers):
    """With 2 workers both meshes bind the mesh's port (SO_REUSEPORT) and both serve it."""
    app_port, mesh_port, admin_port = free_port(), free_port(), free_port()
    up_port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "greenmesh.testing.upstream", str(up_port)],
                          cwd=ROOT, stderr=subprocess.DEVNULL)
    (tmp_path / "mesh.yaml").write_text(textwrap.dedent(f"""
        admin: {{address: 127.0.0.1:{admin_port}}}
        listeners: [{{name: l, address: 127.0.0.1:{mesh_port}, route_config: r}}]
        route_configs:
          - name: r
            virtual_hosts:
              - {{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: c}}}}]}}
        clusters: [{{name: c, endpoints: ["127.0.0.1:{up_port}"]}}]
    """))
    (tmp_path / "app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('content-type', 'text/plain')])\n"
        "    return [b'the app itself\\n']\n")
    env = dict(os.environ, GREENMESH_CONFIG=str(tmp_path / "mesh.yaml"),
               PYTHONPATH=f"{tmp_path}:{ROOT}", WEB_CONCURRENCY=str(workers))
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out_file:
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "etc" / "gunicorn_conf.py"),
             "-b", f"127.0.0.1:{app_port}", "app:app"],
            cwd=tmp_path, env=env, stdout=out_file, stderr=subprocess.STDOUT)
    try:
        wait_port(up_port, up)
        wait_port(app_port, gunicorn)
        wait_port(mesh_port, gunicorn)
        for port, body in ((app_port, b"the app itself\n"), (mesh_port, b"hello from upstream\n")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == body
        if workers > 1:
            admins = lambda: re.findall(r"admin=127\.0\.0\.1:(\d+)",  # noqa: E731
                                        log.read_text())
            assert until(lambda: len(admins()) == workers)
            served = lambda port: int(re.search(  # noqa: E731
                r"http\.l\.downstream_rq_total: (\d+)", http_text(int(port), "/stats")).group(1))
            sent = 0

            def every_worker_served() -> bool:
                nonlocal sent
                assert sent < 200
                conn = http.client.HTTPConnection("127.0.0.1", mesh_port, timeout=5)
                conn.request("GET", "/")  # a new connection each: the kernel spreads them
                assert conn.getresponse().read() == b"hello from upstream\n"
                conn.close()
                sent += 1
                return all(served(port) > 0 for port in admins())
            assert until(every_worker_served)
        gunicorn.send_signal(signal.SIGTERM)
        gunicorn.wait(timeout=30)
        out = log.read_text()
        assert gunicorn.returncode == 0, out
        assert out.count("mesh_stopped") == workers, out
    finally:
        gunicorn.kill()
        up.kill()
        up.wait()


def test_the_gunicorn_example_calls_two_services_through_the_mesh(tmp_path):
    """etc/examples as scripts/example.sh runs them (on fresh ports): the app's calls go through
    each worker's mesh, one to an HTTP/1.1 service and one over HTTP/2, logged through the
    standard logging; with the services gone the app gets the mesh's error and its flags."""
    users, search, admin, app_port = free_port(), free_port(), free_port(), free_port()
    config = (ROOT / "etc" / "examples" / "gateway.yaml").read_text()
    for old, new in (("8080", users), ("8081", search), ("15000", admin)):
        assert old in config
        config = config.replace(old, str(new))
    (tmp_path / "gateway.yaml").write_text(config)
    services = subprocess.Popen([sys.executable, str(ROOT / "etc" / "examples" / "services.py"),
                                 str(users), str(search)], cwd=ROOT, stderr=subprocess.DEVNULL)
    env = dict(os.environ, GREENMESH_CONFIG=str(tmp_path / "gateway.yaml"),
               PYTHONPATH=str(ROOT))
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out_file:
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "etc" / "gunicorn_conf.py"),
             "--chdir", str(ROOT / "etc" / "examples"), "-b", f"127.0.0.1:{app_port}",
             "gateway:app"], cwd=tmp_path, env=env, stdout=out_file, stderr=subprocess.STDOUT)
    try:
        wait_port(users, services)
        wait_port(search, services)
        wait_port(app_port, gunicorn)

        def get(path: str) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", app_port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        status, body = get("/users/7")
        assert status == 200, body
        assert body["user"]["served_by"] == "users"
        assert json.loads(body["user"]["request"])["path"] == "/echo/users/7"
        assert body["search"]["protocol"] == "HTTP/2" and body["search"]["asked"] == {"user": "7"}
        assert until(lambda: log.read_text().count("access listener=inprocess") == 2)
        services.kill()
        services.wait()
        status, body = get("/users/8")
        assert status == 502 and "UF" in body["flags"], body
        gunicorn.send_signal(signal.SIGTERM)
        gunicorn.wait(timeout=30)
        assert gunicorn.returncode == 0, log.read_text()
        assert "mesh_stopped" in log.read_text()
    finally:
        gunicorn.kill()
        services.kill()
        services.wait()
