"""Every fuzz target (tests/fuzz_targets.py) on its corpus (seeds and each crash ever found,
kept as regression inputs), then on a bounded, fixed set of mutations of it. Longer runs:
``bash scripts/fuzz.sh TARGET SECONDS``."""

from __future__ import annotations

import random

import pytest

from tests.fuzz_targets import TARGETS, corpus, mutate

MUTATIONS = 400  # per target: a second or two each, the same inputs every run


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_on_its_corpus_and_mutations(name):
    target = TARGETS[name]
    inputs = corpus(name)
    assert inputs, f"tests/fuzz_corpus/{name}/ has no seeds"
    rng = random.Random(name)
    for data in [*inputs, *(mutate(rng.choice(inputs), rng) for _ in range(MUTATIONS))]:
        try:
            target(data)
        except Exception as e:
            raise AssertionError(f"{name} fails on {data!r}") from e
