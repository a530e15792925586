#!/usr/bin/env bash
# Runs greenmesh with etc/mesh.yaml in front of the demo upstream (127.0.0.1:8080).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
.venv/bin/python -m greenmesh.testing.upstream 8080 &
upstream=$!
trap 'kill $upstream 2>/dev/null' EXIT
# greenmesh says what to try (its "try" line) once it listens, from the config it loaded.
.venv/bin/greenmesh --config "${CONFIG:-etc/mesh.yaml}" "$@"
