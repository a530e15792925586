"""A greenlet killed while it runs compiled code keeps its arguments.

gevent's run() passes its args tuple on without a reference of its own and kill() empties it
at once, and a mypyc-compiled function borrows its arguments instead of owning them: a request
pump was seen calling a freed callback (compiled build, h2spec through nginx). In the compiled
run of the suite this test fails with plain gevent.spawn (checked): the freed relay's memory is
taken by decoys whose callback is None, so the pump's next chunk finds None."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT

CASE = """
import gevent, gevent.event
from greenmesh.cooperate import spawn_held
from greenmesh.proxy import _Relay
from greenmesh.streams.base import WOULD_BLOCK

ready = gevent.event.Event()
kept = []

class Nowhere:
    trailers = None
    def send_data(self, data, end_stream): pass
    def send_trailers(self, trailers): pass
    def flush(self): pass

def read(block):
    if not block:
        return WOULD_BLOCK
    ready.wait()
    ready.clear()
    return b"chunk"

relay = _Relay(read, Nowhere(), Nowhere(), kept.append)
pump = spawn_held(_Relay.run, relay, True)
del relay  # the greenlet's arguments hold it, as a request pump's do
gevent.sleep(0)  # the pump waits for a chunk
ready.set()  # the chunk comes (the pump is woken first)...
pump.kill(block=False)  # ...and the kill, which empties the greenlet's arguments now
decoys = [_Relay(read, None, None, None) for _ in range(200)]  # reuse what was freed
gevent.sleep(0)
gevent.sleep(0)
print(kept, pump.dead)
"""


def test_a_killed_pump_keeps_its_relay():
    out = subprocess.run([sys.executable, "-c", CASE], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout == "[b'chunk'] True\n", out.stdout + out.stderr
