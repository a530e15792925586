#!/usr/bin/env bash
# Runs greenmesh with etc/mesh.yaml in front of the demo upstream (127.0.0.1:8080).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
.venv/bin/python -m greenmesh.testing.upstream 8080 &
upstream=$!
trap 'kill $upstream 2>/dev/null' EXIT
echo "greenmesh: listening on 127.0.0.1:15001 (admin 127.0.0.1:15000). Try:"
echo "    curl -i http://127.0.0.1:15001/"
echo "    curl -i --http2-prior-knowledge http://127.0.0.1:15001/"
.venv/bin/greenmesh --config "${CONFIG:-etc/mesh.yaml}" "$@"
