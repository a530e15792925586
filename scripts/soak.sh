#!/usr/bin/env bash
# bash scripts/soak.sh [MINUTES]: mixed HTTP/1.1, h2c and bolt load through greenmesh (the
# compiled build) with faults: EDS pushes every second, an upstream killed and restarted every
# 30 s, the control plane away for 20 s, one malformed resource. Prints every failure by response
# flag, RSS/fds/greenlets over time with their slopes, PASS or FAIL (see bench/soak.py).
EXTRAS=bench
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
missing=()
for tool in wrk:wrk h2load:nghttp2-client; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
EXTRAS=bench bash scripts/compile.sh  # the build of this tree (a no-op when current)
exec .venv/bin/python bench/soak.py "${1:-5}"
