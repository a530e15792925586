"""Run greenmesh inside each gunicorn-gevent worker, beside the app.

    GREENMESH_CONFIG=etc/examples/gateway.yaml gunicorn -c etc/gunicorn_conf.py \\
        --chdir etc/examples -b 127.0.0.1:8000 gateway:app
    WEB_CONCURRENCY=4 GREENMESH_CONFIG=etc/mesh.yaml gunicorn -c etc/gunicorn_conf.py myapp:app

The mesh starts in ``post_worker_init``: by then gunicorn's gevent worker has monkey-patched and
re-initialised the hub, so greenmesh's greenlets run on the worker's own loop. The app gets its
worker's mesh in the WSGI environ (``environ["greenmesh.mesh"]``) and calls services through it
with ``mesh.http`` / ``mesh.bolt`` (no loopback hop). With several workers, each worker's mesh
binds the config's listening addresses too (SO_REUSEPORT: the kernel spreads connections among
them) and serves admin on a port of its own (its ``mesh_started`` line says which).

greenmesh logs through the standard ``logging`` here, as any library in the app does: below,
its info lines (the access log's included) go to stderr, unless the app set up the
``greenmesh`` logger itself (GREENMESH_LOG_LEVEL=WARNING keeps only warnings and errors).
"""

import logging
import os

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
graceful_timeout = 10


def post_worker_init(worker):
    from greenmesh.config import load_file
    from greenmesh.filters.registry import FilterRegistry
    from greenmesh.mesh import Mesh
    from greenmesh.workers import shared

    log = logging.getLogger("greenmesh")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(os.environ.get("GREENMESH_LOG_LEVEL", "INFO"))
        log.propagate = False
    filters = FilterRegistry()
    config = load_file(os.environ.get("GREENMESH_CONFIG", "etc/mesh.yaml"), filters=filters)
    if worker.cfg.workers > 1:
        config = shared(config)
    mesh = worker.greenmesh = Mesh(config, filters=filters, workers=worker.cfg.workers).start()
    app = worker.wsgi

    def with_mesh(environ, start_response):
        environ["greenmesh.mesh"] = mesh
        return app(environ, start_response)
    worker.wsgi = with_mesh  # the worker serves what this attribute holds from here on


def worker_exit(server, worker):
    mesh = getattr(worker, "greenmesh", None)
    if mesh is not None:
        mesh.stop(timeout=5)
