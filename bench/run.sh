#!/usr/bin/env bash
# The benchmarks: `bash bench/run.sh` runs them all (throughput and CPU: HTTP/1.1, HTTP/2, bolt,
# xDS; then latency added, many connections, 100 MB bodies, what filters cost, the in-process
# client against the loopback hop); `bash
# bench/run.sh bolt ARGS` runs one of them with its own arguments (see --help). greenmesh rows run the compiled build
# (scripts/compile.sh, built first), the rows marked "pure Python" the source.
EXTRAS=bench
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/bootstrap.sh"
missing=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy h2load:nghttp2-client; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
EXTRAS=bench bash scripts/compile.sh
case "${1:-all}" in
  http1|http2|http2_floor|bolt|xds|latency|scale|bodies|filters|inprocess|workers) which=$1; shift; exec .venv/bin/python "bench/$which.py" "$@" ;;
  all) for which in http1 http2 bolt xds latency scale bodies filters inprocess; do
         .venv/bin/python "bench/$which.py" || exit 1
       done ;;
  *) echo "usage: bench/run.sh [http1|http2|http2_floor|bolt|xds|latency|scale|bodies|filters|inprocess|workers [ARGS]]" >&2
     exit 2 ;;
esac
