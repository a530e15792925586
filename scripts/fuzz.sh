#!/usr/bin/env bash
# bash scripts/fuzz.sh TARGET SECONDS: fuzzes one parser for as long as asked, coverage-guided
# with atheris (installed into .venv on first use; where it cannot be, random mutation of the
# corpus instead). A crash is saved under tests/fuzz_corpus/TARGET/ and so becomes a regression
# input of the suite (tests/test_fuzz.py). Targets: http1_request http1_response http2_server
# hpack bolt config_text config_values xds router. FUZZ_ENGINE=random skips atheris.
EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
if [ "${FUZZ_ENGINE:-atheris}" = atheris ] && ! .venv/bin/python -c 'import atheris' 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check atheris \
    || echo "fuzz: atheris could not be installed: random mutation instead" >&2
fi
exec .venv/bin/python -m tests.fuzz_targets "$@"
