"""Real processes on 127.0.0.1: greenmesh, the demo upstream, and a scripted raw upstream."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Upstream:
    """``greenmesh.testing.upstream`` in its own process."""

    def __init__(self, name: str = "upstream"):
        self.name = name
        self.port = free_port()
        env = dict(os.environ, UPSTREAM_NAME=name)
        self.proc = subprocess.Popen([sys.executable, "-m", "greenmesh.testing.upstream",
                                      str(self.port)], env=env, cwd=ROOT,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Greenmesh:
    """The ``greenmesh`` CLI in its own process, logging JSON to a file."""

    def __init__(self, config: dict, tmp: Path, log_level: str = "info"):
        self.config = config
        self.stopped_by_test = False
        tmp.mkdir(parents=True, exist_ok=True)
        self.path = tmp / "mesh.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "greenmesh.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "greenmesh.cli", "--config",
                                      str(self.path), "--log-format", "json",
                                      "--log-level", log_level],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        for lst in config.get("listeners", []):
            wait_port(int(lst["address"].rsplit(":", 1)[1]), self.proc)

    def port(self, index: int = 0) -> int:
        return int(self.config["listeners"][index]["address"].rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port()}"

    def logs(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "unparsed", "line": line})
        return out

    def access(self, at_least: int = 1, timeout: float = 5.0) -> list[dict]:
        """The access-log entries, once there are ``at_least`` of them (or the timeout is up):
        a line is written after its response has gone, so it may land a moment later."""
        deadline = time.monotonic() + timeout
        while True:
            entries = [e for e in self.logs() if e.get("event") == "access"]
            if len(entries) >= at_least or time.monotonic() > deadline:
                return entries
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def mesh_config(endpoints: list[str], *, port: int | None = None, timeout: str = "15s",
                domains: tuple = ("*",), routes: list | None = None, listener: dict | None = None,
                cluster: dict | None = None) -> dict:
    """A one-listener, one-cluster config; keyword arguments override the parts tests vary."""
    return {
        "admin": {"address": f"127.0.0.1:{free_port()}"},
        "listeners": [{"name": "ingress", "address": f"127.0.0.1:{port or free_port()}",
                       "protocol": "http1", "route_config": "default", **(listener or {})}],
        "route_configs": [{"name": "default", "virtual_hosts": [{
            "name": "backend", "domains": list(domains),
            "routes": routes or [{"match": {"prefix": "/"},
                                  "route": {"cluster": "backend", "timeout": timeout}}]}]}],
        "clusters": [{"name": "backend", "connect_timeout": "1s",
                      "endpoints": [{"address": a} for a in endpoints], **(cluster or {})}],
    }


class LoopbackServer:
    """A test peer on plain threads: accepts on 127.0.0.1 and serves each connection in a
    thread of its own with ``_serve(conn)``, counting connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.sock.close()


class RawUpstream(LoopbackServer):
    """A scripted upstream on a thread: ``script(conn, request_index_on_conn, request_bytes)``
    answers each request however the test wants, including wrongly."""

    def __init__(self, script):
        self.script = script
        self.requests: list[bytes] = []
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        index = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                if self.script(conn, index, head) is False:
                    return
                index += 1
        except OSError:
            return
        finally:
            conn.close()


def reset(conn: socket.socket) -> None:
    """Closes with an RST rather than a FIN."""
    import struct
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def raw_request(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True
                ) -> bytes:
    """Sends bytes as they are and returns everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read_until_close:
            return s.recv(65536)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def convert_resource(build, message) -> tuple:
    """An xDS resource (an envoy-data-plane message) through greenmesh's converter ``build``,
    as the xDS client does it: (model, warnings); fails the test on errors."""
    from greenmesh.config.reader import Reader
    from greenmesh.streams import default_registry
    from greenmesh.xds.resources import json_form
    r = Reader(default_registry().names(), strict=False)
    built = build(r, json_form(message), "resource")
    assert not r.errors, r.errors
    return built, r.warnings
