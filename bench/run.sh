#!/usr/bin/env bash
# HTTP/1.1 benchmark: wrk through nginx, haproxy, a naive gevent proxy and greenmesh.
EXTRAS=bench
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/bootstrap.sh"
missing=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
exec .venv/bin/python bench/http1.py "$@"
