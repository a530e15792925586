#!/usr/bin/env bash
# The embedded mesh, whole: two services (users over HTTP/1.1 on 8080, search over h2c on 8081),
# then gunicorn-gevent on 127.0.0.1:8000 serving etc/examples/gateway.py, a mesh in each worker
# (etc/gunicorn_conf.py) that the app calls them through. Try: curl -s http://127.0.0.1:8000/users/7
EXTRAS=examples
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
.venv/bin/python etc/examples/services.py 8080 8081 &
services=$!
trap 'kill $services 2>/dev/null' EXIT
GREENMESH_CONFIG=$PWD/etc/examples/gateway.yaml .venv/bin/gunicorn -c etc/gunicorn_conf.py \
  --chdir etc/examples -b 127.0.0.1:8000 gateway:app "$@"
