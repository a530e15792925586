#!/usr/bin/env bash
# The compiled build for the tests and the benchmarks: build/compiled/ is a copy of the tree whose
# data-path modules (setup.py's COMPILED) are compiled by mypyc in place, beside their sources.
# Recompiled only when greenmesh/, setup.py or mypy changed (a minute on two cores); the rest of
# the tree (tests, bench) is copied afresh each time.
EXTRAS=${EXTRAS:-test}
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
out=build/compiled
copy_tree() {  # everything but caches, the venv and the builds
  mkdir -p "$out"
  tar -cf - --exclude=./build --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' \
      --exclude=./.mypy_cache --exclude=./.pytest_cache --exclude=./.ruff_cache \
      --exclude=./.hypothesis --exclude=./bench/results --exclude='*.so' . | tar -xf - -C "$out"
}
stamp=$( (cat setup.py; find greenmesh -name '*.py' | LC_ALL=C sort | xargs cat
          .venv/bin/python -c 'import mypy.version; print(mypy.version.__version__)') | sha1sum)
if [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  copy_tree
  exit 0
fi
rm -rf "$out"
copy_tree
echo "compile: building the compiled modules with mypyc (log: build/compile.log)" >&2
if ! (cd "$out" && GREENMESH_COMPILE=1 ../../.venv/bin/python setup.py build_ext --inplace) \
    >build/compile.log 2>&1; then
  grep -E "error|Error" build/compile.log | head -30 >&2
  echo "compile: mypyc failed; the whole log is build/compile.log" >&2
  exit 1
fi
echo "$stamp" >"$out/.stamp"
