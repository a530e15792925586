#!/usr/bin/env bash
# Sourced by run.sh and test.sh: a Python >= 3.11 venv in .venv with greenmesh installed.
# Debian packages are installed only when a tool is missing (apt-get needs root or sudo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {  # apt_install PACKAGE... : installs what is missing, once per call
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "bootstrap: apt-get install $*" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then apt_install python3; fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "bootstrap: greenmesh needs Python 3.11 or newer" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  rm -rf .venv
  "$PYTHON" -m venv .venv 2>/dev/null || {
    apt_install python3-venv python3-pip
    rm -rf .venv && "$PYTHON" -m venv .venv
  }
fi

# Reinstall only when the declared dependencies change.
EXTRAS=${EXTRAS:-}
stamp=".venv/.greenmesh-$(cat setup.cfg setup.py pyproject.toml | sha1sum | cut -c1-12)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # Pure Python here, whatever the environment says: an editable install would put compiled
  # modules beside the sources, and the tree's own test run must test those sources.
  env -u GREENMESH_COMPILE .venv/bin/python -m pip install -q --disable-pip-version-check \
    -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
