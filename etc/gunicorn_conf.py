"""Run greenmesh inside each gunicorn-gevent worker, beside the app.

    GREENMESH_CONFIG=etc/mesh.yaml gunicorn -c etc/gunicorn_conf.py myapp:app

The mesh starts in ``post_worker_init``: by then gunicorn's gevent worker has monkey-patched and
re-initialised the hub, so greenmesh's greenlets run on the worker's own loop. Keep ``workers = 1``
unless every greenmesh listener may be bound by several processes.
"""

import os

worker_class = "gevent"
workers = 1
graceful_timeout = 10


def post_worker_init(worker):
    from greenmesh.mesh import Mesh

    worker.greenmesh = Mesh.from_file(os.environ.get("GREENMESH_CONFIG", "etc/mesh.yaml")).start()


def worker_exit(server, worker):
    mesh = getattr(worker, "greenmesh", None)
    if mesh is not None:
        mesh.stop(timeout=5)
