"""One keep-alive connection sending requests back to back for S seconds; prints JSON
[[end, duration], ...] in time.monotonic() seconds (system-wide on Linux, so another process
can line them up with its own events). ``steady_load.py PORT SECONDS``"""

import http.client
import json
import sys
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
samples = []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    t0 = time.monotonic()
    conn.request("GET", "/")
    resp = conn.getresponse()
    resp.read()
    t1 = time.monotonic()
    samples.append((t1, t1 - t0 if resp.status == 200 else float("inf")))
sys.stdout.write(json.dumps(samples))
