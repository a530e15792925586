"""Run greenmesh inside each gunicorn-gevent worker, beside the app.

    GREENMESH_CONFIG=etc/mesh.yaml gunicorn -c etc/gunicorn_conf.py myapp:app
    WEB_CONCURRENCY=4 GREENMESH_CONFIG=etc/mesh.yaml gunicorn -c etc/gunicorn_conf.py myapp:app

The mesh starts in ``post_worker_init``: by then gunicorn's gevent worker has monkey-patched and
re-initialised the hub, so greenmesh's greenlets run on the worker's own loop. With several
workers each worker's mesh binds the same listening addresses (SO_REUSEPORT: the kernel spreads
connections among them) and serves admin on a port of its own (its ``mesh_started`` line says
which).
"""

import os

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
graceful_timeout = 10


def post_worker_init(worker):
    from greenmesh.config import load_file
    from greenmesh.filters.registry import FilterRegistry
    from greenmesh.mesh import Mesh
    from greenmesh.workers import shared

    filters = FilterRegistry()
    config = load_file(os.environ.get("GREENMESH_CONFIG", "etc/mesh.yaml"), filters=filters)
    if worker.cfg.workers > 1:
        config = shared(config)
    worker.greenmesh = Mesh(config, filters=filters, workers=worker.cfg.workers).start()


def worker_exit(server, worker):
    mesh = getattr(worker, "greenmesh", None)
    if mesh is not None:
        mesh.stop(timeout=5)
