#!/usr/bin/env bash
# Installs what the tests need (pip extras; curl, nghttp2-client, nginx, wrk, haproxy from Debian
# when missing), lints (ruff), type-checks (mypy, configured in setup.cfg), runs the full suite on
# the Python source, then builds the compiled build (scripts/compile.sh) and runs the suite on it.
# GREENMESH_TEST_COMPILED=0 skips the second run.
EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
missing=()
for tool in curl:curl h2load:nghttp2-client nginx:nginx-light wrk:wrk haproxy:haproxy; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
.venv/bin/ruff check greenmesh tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
[ "${GREENMESH_TEST_COMPILED:-1}" = 0 ] && exit 0
bash scripts/compile.sh
export H2SPEC=${H2SPEC:-$PWD/../shared/tools/h2spec}  # the copy's ../shared is not beside it
cd build/compiled
GREENMESH_COMPILED=1 exec ../../.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
