"""Workers: N greenmesh processes on the same listening addresses (SO_REUSEPORT: the kernel
spreads connections), under a parent that starts them, restarts one that dies, forwards
SIGHUP/SIGUSR1, drains them all on SIGTERM, and serves the one admin address for the set.

Each worker is the ordinary CLI with ``--worker I/N``: its own cluster manager, pools and xDS
stream, and a private admin on a loopback port the parent gave it. The parent serves admin from
theirs: stats summed (and per-worker rows where workers differ), ``/ready`` only when every
worker is ready, commands sent to every worker, the rest from one worker (``?worker=I``).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlencode

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer

from greenmesh import model
from greenmesh.admin.prometheus import CONTENT_TYPE as PROMETHEUS
from greenmesh.logger import get_logger

log = get_logger("greenmesh.workers")

RESTART_BACKOFF = 1.0  # a worker that died within its first seconds waits this long, doubling
MAX_BACKOFF = 30.0


def shared(config: model.MeshConfig, admin: model.Address | None = None) -> model.MeshConfig:
    """The config of one of several processes serving the same listeners: each listener binds
    with SO_REUSEPORT; admin moves to ``admin`` (default: its host, a port of its own, which
    its start line says), since one admin address cannot answer for several processes."""
    if config.admin is not None or admin is not None:
        host = config.admin.address.host if config.admin is not None else "127.0.0.1"
        admin = admin or model.Address(host, 0)
    return dataclasses.replace(
        config, admin=model.Admin(admin) if admin is not None else None,
        listeners=tuple(dataclasses.replace(lc, reuse_port=True) for lc in config.listeners))


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    __slots__ = ("index", "proc", "admin_port", "started", "backoff")

    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.admin_port = 0
        self.started = 0.0
        self.backoff = RESTART_BACKOFF


class Supervisor:
    def __init__(self, config: model.MeshConfig, child_args: list[str], count: int):
        """``child_args``: the CLI's own arguments for a worker (config path, log flags)."""
        self.config = config
        self.count = count
        self._args = child_args
        self.workers = [Worker(i) for i in range(count)]
        self._stopping = False
        self._done = gevent.event.Event()
        self._admin: WSGIServer | None = None

    # -- processes ----------------------------------------------------------------------------
    def start(self) -> None:
        for w in self.workers:
            self._spawn(w)
        if self.config.admin is not None:
            a = self.config.admin.address
            self._admin = WSGIServer((a.host, a.port), self._app, log=None, error_log=None)
            self._admin.start()
        from greenmesh import __version__
        log.info("workers_started", version=__version__, workers=self.count,
                 pids=[w.proc.pid for w in self.workers if w.proc],
                 admin=str(self.config.admin.address) if self.config.admin else None,
                 listeners={lc.name: str(lc.address) for lc in self.config.listeners})

    def _spawn(self, w: Worker) -> None:
        w.admin_port = _free_loopback_port()
        w.started = time.monotonic()
        w.proc = subprocess.Popen([sys.executable, "-m", "greenmesh.cli", *self._args,
                                   "--worker", f"{w.index}/{self.count}",
                                   "--worker-admin", f"127.0.0.1:{w.admin_port}"])
        gevent.spawn(self._watch, w, w.proc)

    def _watch(self, w: Worker, proc: subprocess.Popen) -> None:
        code = proc.wait()
        if self._stopping:
            if all(x.proc is None or x.proc.poll() is not None for x in self.workers):
                self._done.set()
            return
        lived = time.monotonic() - w.started
        log.warning("worker_died", worker=w.index, pid=proc.pid, exit_code=code,
                    lived_seconds=round(lived, 1))
        if lived < 10:
            gevent.sleep(w.backoff)  # crashing at start: do not spin
            w.backoff = min(w.backoff * 2, MAX_BACKOFF)
        else:
            w.backoff = RESTART_BACKOFF
        if not self._stopping:
            self._spawn(w)
            log.info("worker_restarted", worker=w.index, pid=w.proc.pid if w.proc else None)

    def signal(self, signum: int) -> None:
        """SIGHUP (reload), SIGUSR1: every worker gets it."""
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM: every worker drains and exits; then the parent."""
        self._stopping = True
        log.info("workers_stopping", workers=self.count)
        self.signal(signal.SIGTERM)
        if all(w.proc is None or w.proc.poll() is not None for w in self.workers):
            self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if self._admin is not None:
            self._admin.stop(timeout=1)
        log.info("workers_stopped")

    # -- admin ----------------------------------------------------------------------------------
    def _ask(self, w: Worker, method: str, path: str) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", w.admin_port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.getheader("content-type") or "", resp.read()
        except OSError as e:
            return 503, "text/plain", f"worker {w.index}: {e}\n".encode()
        finally:
            conn.close()

    def _all(self, method: str, path: str) -> list[tuple[int, str, bytes]]:
        jobs = [gevent.spawn(self._ask, w, method, path) for w in self.workers]
        gevent.joinall(jobs)
        return [j.value or (503, "text/plain", b"no answer\n") for j in jobs]

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        status, ctype, body = self._answer(method, path, query)
        start_response(status, [("content-type", ctype), ("content-length", str(len(body)))])
        return [body]

    def _answer(self, method: str, path: str, query: dict[str, str]) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path == "/ready":
            answers = self._all("GET", "/ready")
            states = [b.decode().strip() for _, _, b in answers]
            if all(code == 200 for code, _, _ in answers):
                return "200 OK", text, b"LIVE\n"
            worst = next(s for (code, _, _), s in zip(answers, states, strict=True)
                         if code != 200)
            return "503 Service Unavailable", text, (worst + "\n").encode()
        if path == "/quitquitquit" and method == "POST":
            gevent.spawn(self.stop)
            return "200 OK", text, b"OK\n"
        if path == "/server_info" and method == "GET":
            code, ctype, body = self._ask(self.workers[0], "GET", "/server_info")
            info = json.loads(body) if code == 200 else {}
            ready = self._answer("GET", "/ready", {})
            info.update(workers=self.count, state=ready[2].decode().strip(),
                        worker_pids=[w.proc.pid if w.proc else None for w in self.workers])
            return "200 OK", "application/json", (json.dumps(info, indent=2) + "\n").encode()
        if path in ("/logging", "/healthcheck/fail", "/healthcheck/ok", "/drain_listeners"):
            qs = urlencode(query)
            answers = self._all(method, path + ("?" + qs if qs else ""))
            code, ctype, body = answers[0]
            return f"{code} {http.client.responses.get(code, '')}", ctype, body
        if path in ("/stats", "/stats/prometheus"):
            return self._stats(path, query)
        # The rest is the same in every worker, or asked of one: ?worker=I.
        index = int(query.pop("worker", "0") or 0)
        if not 0 <= index < self.count:
            return "400 Bad Request", text, f"worker: 0 to {self.count - 1}\n".encode()
        qs = urlencode(query)
        code, ctype, body = self._ask(self.workers[index], method,
                                      path + ("?" + qs if qs else ""))
        return f"{code} {http.client.responses.get(code, '')}", ctype, body

    def _stats(self, path: str, query: dict[str, str]) -> tuple[str, str, bytes]:
        if path == "/stats/prometheus" or query.get("format") == "prometheus":
            pages = [b.decode() for code, _, b in self._all("GET", "/stats/prometheus")
                     if code == 200]
            return "200 OK", PROMETHEUS, merge_prometheus(pages).encode()
        qs = urlencode({**query, "format": "json"})
        per_worker = []
        for code, _, body in self._all("GET", f"/stats?{qs}"):
            if code != 200:
                return "503 Service Unavailable", "text/plain", body
            per_worker.append({e["name"]: e["value"] for e in json.loads(body)["stats"]
                               if "name" in e})
        summed, rows = sum_stats(per_worker)
        if query.get("format") == "json":
            return "200 OK", "application/json", (json.dumps(
                {"stats": [{"name": k, "value": v} for k, v in rows]}, indent=2) + "\n").encode()
        return "200 OK", "text/plain; charset=utf-8", "".join(
            f"{k}: {v}\n" for k, v in rows).encode()


def sum_stats(per_worker: list[dict[str, int]]) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Every stat summed over the workers, then ``worker.<i>.<name>`` rows for the stats whose
    values differ between workers (how the load spread)."""
    names = sorted({n for stats in per_worker for n in stats})
    summed = {n: sum(stats.get(n, 0) for stats in per_worker) for n in names}
    rows = list(summed.items())
    for n in names:
        values = [stats.get(n, 0) for stats in per_worker]
        if len(set(values)) > 1:
            rows += [(f"worker.{i}.{n}", v) for i, v in enumerate(values)]
    return summed, rows


def merge_prometheus(pages: list[str]) -> str:
    """Workers' exposition pages as one: samples of the same series summed (counters, gauges,
    histogram buckets alike), each family's lines together under its one TYPE line."""
    families: dict[str, dict[str, float]] = {}  # TYPE line -> series -> value
    for page in pages:
        current: dict[str, float] | None = None
        for line in page.splitlines():
            if line.startswith("# TYPE "):
                current = families.setdefault(line, {})
            elif line and not line.startswith("#") and current is not None:
                series, _, value = line.rpartition(" ")
                current[series] = current.get(series, 0.0) + float(value)
    return "".join(type_line + "\n" + "".join(f"{k} {_number(v)}\n" for k, v in series.items())
                   for type_line, series in families.items())


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
