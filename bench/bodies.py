"""100 MB bodies both ways, HTTP/1.1 and h2c: time and the proxy's peak RSS growth.

nginx (one worker, pinned to core 0 with the client) is the origin: GET serves a 100 MB file,
PUT stores one (its DAV module reads the whole body before answering), both from /dev/shm. curl
(pinned to core 0) downloads and uploads through each target, one transfer at a time; each proxy
runs pinned to core 1. Before each transfer the proxy's peak-RSS mark is reset
(/proc/PID/clear_refs), so "peak growth" is its VmHWM after the transfer minus its RSS before.
Targets: nginx directly, MOSN (HTTP/1.1 -> HTTP/1.1, h2c -> h2c), greenmesh (the same, compiled
build, access log on). Medians of the rounds for time, the largest growth seen.

    .venv/bin/python bench/bodies.py [--rounds N] [--mib M]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    LOAD_CORE,
    free_port,
    greenmesh,
    mosn,
    one_route_config,
    pinned,
    rss_mib,
    save_results,
    stop_all,
    wait_port,
    which,
)

from greenmesh.testing.nginx import nginx_binary, nginx_conf


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def transfer(port: int, h2: bool, upload: Path | None, mib: int) -> float:
    """One curl download (``upload`` None) or PUT upload of ``mib`` MiB; its wall time in s."""
    cmd = [which("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
           "-H", "Expect:", *(["--http2-prior-knowledge"] if h2 else [])]
    if upload is None:
        cmd.append(f"http://127.0.0.1:{port}/big")
    else:
        cmd += ["-T", str(upload), f"http://127.0.0.1:{port}/up/copy"]
    start = time.monotonic()
    out = subprocess.run(pinned(cmd, LOAD_CORE), capture_output=True, text=True, timeout=300)
    took = time.monotonic() - start
    status, size = out.stdout.split() if out.stdout else ("000", "0")
    expected_ok = ("200",) if upload is None else ("201", "204")
    if status not in expected_ok or (upload is None and int(size) != mib << 20):
        raise RuntimeError(f"transfer through port {port} failed: {out.stdout} {out.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-bodies-", dir=shm))
    www = tmp / "www"
    (www / "up").mkdir(parents=True)
    tmp.chmod(0o755)  # nginx's workers run as another user: they read www and write www/up
    (www / "up").chmod(0o777)
    source = tmp / "source.bin"
    with open(source, "wb") as f:
        chunk = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(args.mib):
            f.write(chunk)
    shutil.copy(source, www / "big")
    up_h1, up_h2 = free_port(), free_port()
    conf = nginx_conf(tmp, "origin", 1,
                      f"server {{ listen 127.0.0.1:{up_h1}; listen 127.0.0.1:{up_h2} http2; "
                      f"root {www}; client_max_body_size 0; "
                      "location /up/ { dav_methods PUT; } }")
    procs = [subprocess.Popen(pinned([nginx_binary(), "-c", str(conf)], LOAD_CORE),
                              stderr=subprocess.DEVNULL)]
    gm_h1, gm_h2 = free_port(), free_port()
    # One process, two listeners: HTTP/1.1 -> HTTP/1.1 and h2c -> h2c.
    config = one_route_config(gm_h1, "http1", "http1", up_h1).replace(
        "clusters:",
        f"""  - name: r2
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: up2, timeout: 300s}}}}]
clusters:
  - {{name: up2, protocol: http2, connect_timeout: 5s, endpoints: ["127.0.0.1:{up_h2}"]}}""")
    config = config.replace("timeout: 15s", "timeout: 300s").replace(
        "listeners:\n", f"listeners:\n  - {{name: ingress2, address: 127.0.0.1:{gm_h2}, "
                        "protocol: http2, route_config: r2}\n")
    gm = greenmesh(tmp, "gm", config)
    procs.append(gm)
    targets = {"direct HTTP/1.1": (up_h1, False, None), "direct h2c": (up_h2, True, None),
               "greenmesh HTTP/1.1": (gm_h1, False, gm.pid), "greenmesh h2c": (gm_h2, True, gm.pid)}
    m = mosn(tmp, up_h1, up_h2, free_port())
    if m is not None:
        procs.append(m[0])
        targets["MOSN HTTP/1.1"] = (m[1]["h1"], False, m[0].pid)
        targets["MOSN h2c"] = (m[1]["h2"], True, m[0].pid)
    rows: dict[str, dict] = {}
    try:
        for port, _, _ in targets.values():
            wait_port(port)
        times: dict[str, list[float]] = {}
        growth: dict[str, float] = {}
        for r in range(args.rounds):
            for name, (port, h2, pid) in targets.items():
                for way, upload in (("download", None), ("upload", source)):
                    key = f"{name} {way}"
                    if pid is not None:
                        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM
                        before = _status_kib(pid, "VmRSS")
                    took = transfer(port, h2, upload, args.mib)
                    times.setdefault(key, []).append(took)
                    line = f"round {r + 1} {key:32s} {took:6.2f} s"
                    if pid is not None:
                        grew = (_status_kib(pid, "VmHWM") - before) / 1024
                        growth[key] = max(growth.get(key, 0.0), grew)
                        line += f"  peak RSS +{grew:.1f} MiB (RSS now {rss_mib(pid):.0f} MiB)"
                    print(line, file=sys.stderr)
        for key, ts in times.items():
            rows[key] = {"seconds": statistics.median(ts), "peak_rss_growth_mib": growth.get(key)}
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    title = (f"{args.mib} MiB bodies, one curl transfer at a time, median of {args.rounds} "
             "rounds; proxies pinned to core 1, curl and nginx to core 0")
    print(f"\n{title}\n")
    print("| target, direction | seconds | MB/s | proxy peak RSS growth MiB |")
    print("|---|---:|---:|---:|")
    for key, row in rows.items():
        g = row["peak_rss_growth_mib"]
        print(f"| {key} | {row['seconds']:.2f} | {args.mib * 1.048576 / row['seconds']:.0f} | "
              + (f"{g:.1f}" if g is not None else "—") + " |")
    print()
    ratios = {}
    for proto in ("HTTP/1.1", "h2c"):
        for way in ("download", "upload"):
            a, b = rows.get(f"greenmesh {proto} {way}"), rows.get(f"MOSN {proto} {way}")
            if a and b:
                line = (f"greenmesh / MOSN, {proto} {way}: time {a['seconds'] / b['seconds']:.2f}x,"
                        f" peak RSS growth {a['peak_rss_growth_mib']:.1f} vs "
                        f"{b['peak_rss_growth_mib']:.1f} MiB")
                ratios[f"{proto} {way}"] = line
                print(line)
    save_results("bodies", {"title": title, "rows": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
