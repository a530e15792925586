"""Real processes on 127.0.0.1: greenmesh, the demo upstream, and a scripted raw upstream."""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never the same one twice in a test run (the kernel may
    hand a just-released port out again). A port can still be taken before its user binds it:
    the process harnesses below then start again on fresh ports."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def until(predicate, timeout: float = 10.0, step: float = 0.01) -> bool:
    """Polls ``predicate`` until it holds (True) or ``timeout`` passes (False): how tests wait
    for greenmesh to do something, instead of sleeping and hoping it did."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def _with_fresh_port(address: str) -> str:
    return f"{address.rsplit(':', 1)[0]}:{free_port()}"


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
    """``greenmesh.testing.upstream`` in its own process (on a fresh port if its first one was
    taken meanwhile)."""

    def __init__(self, name: str = "upstream"):
        self.name = name
        env = dict(os.environ, UPSTREAM_NAME=name)
        for _ in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen([sys.executable, "-m", "greenmesh.testing.upstream",
                                          str(self.port)], env=env, cwd=ROOT,
                                         stderr=subprocess.DEVNULL)
            try:
                wait_port(self.port, self.proc)
                return
            except RuntimeError:  # exited: most likely its port was taken
                continue
        raise RuntimeError("the test upstream does not start")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Greenmesh:
    """The ``greenmesh`` CLI in its own process, logging JSON to a file.

    If one of its ports was taken between ``free_port()`` and its bind, it starts again on fresh
    ports, rewriting the addresses in ``config`` in place (tests read ports from it)."""

    def __init__(self, config: dict, tmp: Path, log_level: str = "info",
                 env: dict[str, str] | None = None, nofile: int | None = None):
        """``nofile``: the process's file limit (soft and hard), to see what is sized by it."""
        self.config = config
        self.stopped_by_test = False
        tmp.mkdir(parents=True, exist_ok=True)
        self.path = tmp / "mesh.yaml"
        self.log_path = tmp / "greenmesh.log"
        for attempt in range(3):
            self.path.write_text(yaml.safe_dump(config))
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen([sys.executable, "-m", "greenmesh.cli", "--config",
                                          str(self.path), "--log-format", "json",
                                          "--log-level", log_level],
                                         cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=None if nofile is None else
                                         lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                    (nofile, nofile)))
            try:
                for lst in config.get("listeners", []):
                    wait_port(int(lst["address"].rsplit(":", 1)[1]), self.proc)
                if config.get("admin"):
                    wait_port(self.admin_port, self.proc)
                return
            except RuntimeError:
                self._log.close()
                if attempt == 2 or b"Address already in use" not in self.log_path.read_bytes():
                    raise
                for lst in config.get("listeners", []):
                    lst["address"] = _with_fresh_port(lst["address"])
                config["admin"]["address"] = _with_fresh_port(config["admin"]["address"])

    def port(self, index: int = 0) -> int:
        return int(self.config["listeners"][index]["address"].rsplit(":", 1)[1])

    @property
    def admin_port(self) -> int:
        return int(self.config["admin"]["address"].rsplit(":", 1)[1])

    def stats(self) -> dict[str, int]:
        """The admin's counters."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", "/stats")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return parse_stats(text)

    def host_value(self, cluster: str, host: str, name: str) -> str:
        """A host's entry in the admin's /clusters (Envoy's ``cluster::host::name::value``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", "/clusters")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for line in text.splitlines():
            c, h, n, v = line.split("::", 3)
            if (c, h, n) == (cluster, host, name):
                return v
        return ""

    def host_stat(self, cluster: str, host: str, name: str) -> int:
        return int(self.host_value(cluster, host, name) or 0)

    def stat(self, name: str) -> int:
        return self.stats().get(name, 0)

    def wait_stat(self, name: str, at_least: int = 1, timeout: float = 10.0) -> int:
        """Waits until a counter reaches ``at_least`` (Envoy's integration tests' way) and
        returns it; fails the test if it does not in time."""
        assert until(lambda: self.stat(name) >= at_least, timeout), \
            f"{name} stayed at {self.stat(name)}, expected {at_least}"
        return self.stat(name)

    def wait_log(self, event: str, timeout: float = 10.0) -> list[dict]:
        """The log entries of ``event``, once there is one."""
        assert until(lambda: any(e.get("event") == event for e in self.logs()), timeout), \
            f"no {event} in the log"
        return [e for e in self.logs() if e.get("event") == event]

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


def http_text(port: int, path: str) -> str:
    """A GET's body on 127.0.0.1 (an admin page)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def parse_stats(text: str) -> dict[str, int]:
    """The counters and gauges of the admin's /stats text (histogram lines left out)."""
    out = {}
    for line in text.splitlines():
        name, value = line.split(": ", 1)
        if value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


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
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.closed = 0  # connections this server has closed
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
            self.closed += 1


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
