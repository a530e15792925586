#!/usr/bin/env bash
# Installs what the tests need (pip extras; curl, nghttp2-client, nginx, wrk, haproxy from Debian
# when missing), lints (ruff), type-checks (mypy, configured in setup.cfg), and runs the full suite.
EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
missing=()
for tool in curl:curl h2load:nghttp2-client nginx:nginx-light wrk:wrk haproxy:haproxy; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
.venv/bin/ruff check greenmesh tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
