"""greenmesh is a pure-Python package. With GREENMESH_COMPILE=1 the modules every request runs
through are also compiled by mypyc into C extensions that sit beside them; the Python source of
each stays the reference, and the suite runs against both (README: "The compiled build").

Compiling needs mypy (the ``compile`` extra) and the packages greenmesh imports, so build
without isolation: ``pip install .[compile] && GREENMESH_COMPILE=1 pip install
--no-build-isolation .``; ``scripts/compile.sh`` builds a compiled copy of the tree for the
tests and the benchmarks.
"""

from __future__ import annotations

import os

from setuptools import setup

# The data path, listener to upstream pool: what a request costs is spent here. Configuration,
# xDS, the admin server and the CLI stay interpreted (they run once per change, not per request),
# and so must cooperate.py: spawn_held relies on an interpreted frame owning its arguments.
COMPILED = [
    "greenmesh/access_log.py",
    "greenmesh/conn.py",
    "greenmesh/deadline.py",
    "greenmesh/failures.py",
    "greenmesh/listener.py",
    "greenmesh/logfile.py",
    "greenmesh/mirror.py",
    "greenmesh/model.py",
    "greenmesh/proxy.py",
    "greenmesh/retry.py",
    "greenmesh/router.py",
    "greenmesh/stats.py",
    "greenmesh/streams/base.py",
    "greenmesh/streams/http_common.py",
    "greenmesh/streams/inprocess.py",
    "greenmesh/streams/http1.py",
    "greenmesh/streams/http1_codec.py",
    "greenmesh/streams/http2/client.py",
    "greenmesh/streams/http2/codec.py",
    "greenmesh/streams/http2/connection.py",
    "greenmesh/streams/http2/frames.py",
    "greenmesh/streams/http2/headers.py",
    "greenmesh/streams/http2/inbound.py",
    "greenmesh/streams/http2/server.py",
    "greenmesh/streams/http2/state.py",
    "greenmesh/streams/multiplex.py",
    "greenmesh/streams/xprotocol/__init__.py",
    "greenmesh/streams/xprotocol/bolt.py",
    "greenmesh/streams/xprotocol/stream.py",
    "greenmesh/upstream/breakers.py",
    "greenmesh/upstream/cluster.py",
    "greenmesh/upstream/host.py",
    "greenmesh/upstream/lb.py",
    "greenmesh/upstream/outlier.py",
    "greenmesh/upstream/pool.py",
    "greenmesh/upstream/priority.py",
]


def _ext_modules() -> list:
    if os.environ.get("GREENMESH_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    return mypycify(COMPILED, opt_level="3", debug_level="1")


setup(ext_modules=_ext_modules())
