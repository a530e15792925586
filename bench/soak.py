"""Soak with faults: mixed HTTP/1.1 (wrk), h2c (h2load) and bolt load through greenmesh for
MINUTES, its clusters and endpoints from a real ADS control plane, while

- EDS pushes every second (the endpoints' weights change),
- every 30 s an upstream is killed with SIGKILL and restarted (HTTP and bolt in turn),
- at 60 s the control plane stops for 20 s, then comes back on the same port,
- at 100 s one malformed resource is pushed (NACKed; the next push is good again).

Routes retry ``connect-failure,reset`` (3 times, another host each time) and clusters eject
failing hosts (outlier detection). Every request greenmesh answered is in its access log: each
failure is classified by response flag and by whether it came within 5 s after a kill. RSS, fds
and greenlets are sampled every 5 s; their slope over the run (after a minute of warm-up) says
whether anything leaks. Loopback only, bounded by MINUTES. Pass: no failure outside the seconds
after a kill, flat RSS and fds, no traceback in the log.

    bash scripts/soak.sh [MINUTES]        (default 5)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from common import (
    LOAD_CORE,
    RESULTS,
    ROOT,
    free_port,
    greenmesh,
    pinned,
    stop_all,
    wait_port,
    which,
)

from greenmesh.testing.controlplane import CDS, EDS, ControlPlane

KILL_EVERY, AFTER_KILL = 30.0, 5.0  # seconds
CP_DOWN_AT, CP_DOWN_FOR, BAD_RESOURCE_AT = 60.0, 20.0, 100.0
SAMPLE_EVERY, WARMUP = 5.0, 60.0
SERVICE = "com.example.EchoService:1.0"  # bench/boltwire.py's requests


def _clusters(bad: bool = False) -> list:
    import datetime

    from envoy_data_plane.envoy.config.cluster.v3 import Cluster, OutlierDetection
    common = {"type": "EDS", "connect_timeout": "0.25s", "eds_cluster_config": {
        "eds_config": {"ads": {}}}}
    out = [Cluster.from_dict({"name": "web", **common}),
           Cluster.from_dict({"name": "rpc", **common, "metadata": {
               "filter_metadata": {"greenmesh": {"protocol": "bolt"}}}})]
    if bad:  # refused by greenmesh's converter: the whole push is NACKed
        out.append(Cluster.from_dict({"name": "broken", **common}))
    for c in out:
        c.outlier_detection = OutlierDetection(
            consecutive_5xx=3, interval=datetime.timedelta(seconds=1),
            base_ejection_time=datetime.timedelta(seconds=5),
            max_ejection_percent=101 if c.name == "broken" else 50)
    return out


def _endpoints(name: str, ports: list[int], tick: int) -> object:
    from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
    return ClusterLoadAssignment.from_dict({"cluster_name": name, "endpoints": [{
        "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": p}}},
            "load_balancing_weight": 1 + (i + tick) % 2} for i, p in enumerate(ports)]}]})


def _config(admin: int, cp: int, h1: int, h2: int, bolt: int) -> str:
    retry = {"retry_on": "connect-failure,reset", "num_retries": 3,
             "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
             "host_selection_retry_max_attempts": 3}
    web = {"name": "web", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "web", "timeout": "5s",
                                             "retry_policy": retry}}]}]}
    rpc = {"name": "rpc", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"headers": [{"name": "service", "string_match": {"exact": SERVICE}}]},
         "route": {"cluster": "rpc", "timeout": "5s", "retry_policy": retry}}]}]}
    return json.dumps({
        "admin": {"address": f"127.0.0.1:{admin}"},
        "xds": {"server": f"127.0.0.1:{cp}", "node": {"id": "soak"},
                "initial_fetch_timeout": "2s"},
        "listeners": [
            {"name": "http1", "address": f"127.0.0.1:{h1}", "route_config": "web"},
            {"name": "h2c", "address": f"127.0.0.1:{h2}", "route_config": "web",
             "protocol": "http2"},
            {"name": "bolt", "address": f"127.0.0.1:{bolt}", "route_config": "rpc",
             "protocol": "bolt"}],
        "route_configs": [web, rpc]})


class Upstream:
    """An upstream process that can be killed and brought back on its port."""

    def __init__(self, kind: str, port: int):
        self.kind, self.port = kind, port
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cmd = ([sys.executable, "-m", "greenmesh.testing.upstream", str(self.port)]
               if self.kind == "http" else
               [sys.executable, str(ROOT / "bench" / "bolt_echo.py"), str(self.port)])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(ROOT / "bench")})
        wait_port(self.port)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _stat(admin: int) -> dict[str, int]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    try:
        conn.request("GET", "/stats?format=json")
        entries = json.loads(conn.getresponse().read())["stats"]
    finally:
        conn.close()
    return {e["name"]: e["value"] for e in entries if "name" in e}


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points) or 1.0
    return sum((t - mx) * (v - my) for t, v in points) / den * 60


def main() -> None:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    seconds = int(minutes * 60)
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-soak-"))
    admin, cp_port, h1, h2, bolt = (free_port() for _ in range(5))
    web = [Upstream("http", free_port()) for _ in range(3)]
    rpc = [Upstream("bolt", free_port()) for _ in range(2)]
    web_ports, rpc_ports = [u.port for u in web], [u.port for u in rpc]
    state = {"cp": ControlPlane(cp_port), "tick": 0, "bad": False}
    lock = threading.Lock()

    def push() -> None:
        with lock:
            cp = state["cp"]
            if cp is None:
                return
            state["tick"] += 1
            cp.set(EDS, [_endpoints("web", web_ports, state["tick"]),
                         _endpoints("rpc", rpc_ports, state["tick"])])

    state["cp"].set(CDS, _clusters())
    push()
    gm = greenmesh(tmp, "soak", _config(admin, cp_port, h1, h2, bolt))
    procs: list[subprocess.Popen] = [gm]
    events: list[tuple[float, str]] = []
    samples: list[dict] = []
    try:
        for port in (h1, h2, bolt, admin):
            wait_port(port)
        deadline = time.monotonic() + 30
        while _stat(admin).get("xds.ack", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        start = time.monotonic()
        started_at = time.time()
        loads = [
            subprocess.Popen(pinned([which("wrk"), "-t1", "-c8", f"-d{seconds}s",
                                     f"http://127.0.0.1:{h1}/"], LOAD_CORE),
                             stdout=subprocess.PIPE, text=True),
            subprocess.Popen(pinned([which("h2load"), "-c4", "-m8", "-D", str(seconds),
                                     f"http://127.0.0.1:{h2}/"], LOAD_CORE),
                             stdout=subprocess.PIPE, text=True),
            subprocess.Popen(pinned([sys.executable, str(ROOT / "bench" / "bolt_load.py"),
                                     str(bolt), "4", "8", str(seconds)], LOAD_CORE),
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "bench")})]
        procs += loads
        kills, next_kill, next_sample, next_push = 0, KILL_EVERY / 2, 0.0, 1.0
        cp_down = bad_sent = False
        while (now := time.monotonic() - start) < seconds:
            if now >= next_push:
                push()
                next_push += 1.0
            if now >= next_kill:
                victim = web[kills // 2 % 3] if kills % 2 == 0 else rpc[kills // 2 % 2]
                victim.kill()
                events.append((now, f"killed {victim.kind} upstream :{victim.port}"))
                victim.start()
                kills += 1
                next_kill += KILL_EVERY
            if not cp_down and CP_DOWN_AT <= now < CP_DOWN_AT + CP_DOWN_FOR and \
                    state["cp"] is not None:
                with lock:
                    state["cp"].stop()
                    state["cp"] = None
                cp_down = True
                events.append((now, "control plane stopped"))
            if cp_down and now >= CP_DOWN_AT + CP_DOWN_FOR and state["cp"] is None:
                cp = ControlPlane(cp_port)
                cp.set(CDS, _clusters())
                with lock:
                    state["cp"] = cp
                push()
                events.append((now, "control plane back"))
            if not bad_sent and now >= BAD_RESOURCE_AT and state["cp"] is not None:
                with lock:
                    state["cp"].set(CDS, _clusters(bad=True))
                    state["cp"].set(CDS, _clusters())
                bad_sent = True
                events.append((now, "malformed cluster pushed"))
            if now >= next_sample:
                s = _stat(admin)
                samples.append({"t": round(now, 1), "rss_mib": round(
                    s["server.memory_resident_bytes"] / 2**20, 1), "fds": _fds(gm.pid),
                    "greenlets": s["server.live_greenlets"],
                    "connections": s["server.total_connections"]})
                next_sample += SAMPLE_EVERY
            time.sleep(0.05)
        outputs = [p.communicate(timeout=120)[0] for p in loads]
        final = _stat(admin)
    finally:
        if state["cp"] is not None:
            state["cp"].stop()
        stop_all(procs)
        for u in web + rpc:
            if u.proc is not None and u.proc.poll() is None:
                u.proc.kill()
    report(tmp / "soak.log", started_at, events, samples, outputs, final, minutes)


def _flat(samples: list[dict], key: str, floor: float) -> tuple[float, bool]:
    """The slope per minute, and whether its drift over the window stays within noise: the
    larger of ``floor`` and 5% of the mean."""
    slope = _slope([(s["t"], s[key]) for s in samples])
    if len(samples) < 2:
        return slope, True
    window = (samples[-1]["t"] - samples[0]["t"]) / 60
    mean = sum(s[key] for s in samples) / len(samples)
    return round(slope, 3), abs(slope) * window <= max(floor, 0.05 * mean)


def report(log: Path, started_at: float, events: list, samples: list, outputs: list,
           final: dict, minutes: float) -> None:
    end = minutes * 60
    kills = [t for t, what in events if what.startswith("killed")]
    per_proto: dict[str, Counter] = {}
    unexplained: list[dict] = []
    tracebacks = 0
    for line in log.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if "exception" in e or e.get("level") in ("error", "critical"):
            tracebacks += 1
        if e.get("event") != "access":
            continue
        t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp() - started_at
        c = per_proto.setdefault(e["listener"], Counter())
        c["answered"] += 1
        status, flags = e.get("status", 0), e.get("flags", "-")
        if 200 <= status < 300 and flags in ("-", ""):
            continue
        near_kill = any(0 <= t - k <= AFTER_KILL for k in kills)
        # Load generators stop at the deadline with requests in flight: the client's doing.
        at_end = flags == "DC" and t >= end - 1
        why = " (after a kill)" if near_kill else " (load generator stopped)" if at_end else ""
        c[f"failed {flags} {status}{why}"] += 1
        if not near_kill and not at_end and t > 0:
            unexplained.append({"t": round(t, 2), "listener": e["listener"], "status": status,
                                "flags": flags})
    clients = {"http1 (wrk)": _wrk(outputs[0]), "h2c (h2load)": _h2load(outputs[1]),
               "bolt (bolt_load)": _bolt(outputs[2])}
    late = [s for s in samples if s["t"] >= WARMUP]
    flat = {k: _flat(late, k, floor) for k, floor in
            (("rss_mib", 2.0), ("fds", 8.0), ("greenlets", 20.0))}
    slopes = {k: v[0] for k, v in flat.items()}
    result = {"minutes": minutes, "events": [(round(t, 1), w) for t, w in events],
              "clients": clients, "answered_by_greenmesh": {k: dict(v) for k, v in
                                                            per_proto.items()},
              "unexplained_failures": unexplained[:50], "unexplained_count": len(unexplained),
              "tracebacks": tracebacks, "slopes_per_minute": slopes,
              "samples": samples, "xds": {k: v for k, v in final.items()
                                          if k.startswith("xds.")}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2))
    print(f"soak: {minutes:g} minutes; events:")
    for t, what in events:
        print(f"  {t:7.1f}s  {what}")
    print("clients:", json.dumps(clients))
    for name, c in sorted(per_proto.items()):
        print(f"greenmesh {name}: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    print(f"failures outside {AFTER_KILL:g}s after a kill: {len(unexplained)}",
          unexplained[:5])
    first, last = (late[0], late[-1]) if late else ({}, {})
    print(f"after warm-up: RSS {first.get('rss_mib')} -> {last.get('rss_mib')} MiB, fds "
          f"{first.get('fds')} -> {last.get('fds')}, greenlets {first.get('greenlets')} -> "
          f"{last.get('greenlets')}; slopes per minute: {slopes}; flat: "
          f"{ {k: v[1] for k, v in flat.items()} }")
    print(f"xDS: {result['xds']}; tracebacks/errors in the log: {tracebacks}")
    ok = not unexplained and not tracebacks and all(v[1] for v in flat.values())
    print("soak:", "PASS" if ok else "FAIL", f"(full record: {RESULTS / 'soak.json'})")
    sys.exit(0 if ok else 1)


def _wrk(out: str) -> dict:
    m = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"answered": int(m.group(1)) if m else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else "none"}


def _h2load(out: str) -> dict:
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (.*)", out)
    if not m:
        return {"output": out[-300:]}
    return {"sent": int(m.group(2)), "answered": int(m.group(3)), "succeeded": int(m.group(4)),
            "failed": int(m.group(5)), "errored": int(m.group(6)),
            "status_codes": codes.group(1) if codes else ""}


def _bolt(out: str) -> dict:
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"output": out[-300:]}
    return {"answered": r["requests"], "errors": r["errors"] or "none"}


if __name__ == "__main__":
    main()
