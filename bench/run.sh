#!/usr/bin/env bash
# The benchmarks: `bash bench/run.sh` runs HTTP/1.1 then HTTP/2; `bash bench/run.sh http2 ARGS`
# runs one of them with its own arguments (see --help).
EXTRAS=bench
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/bootstrap.sh"
missing=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy h2load:nghttp2-client; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
case "${1:-all}" in
  http1|http2) which=$1; shift; exec .venv/bin/python "bench/$which.py" "$@" ;;
  all) .venv/bin/python bench/http1.py && .venv/bin/python bench/http2.py ;;
  *) echo "usage: bench/run.sh [http1|http2 [ARGS]]" >&2; exit 2 ;;
esac
