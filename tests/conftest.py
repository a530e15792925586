from __future__ import annotations

import shutil

import pytest

from tests.harness import Greenmesh, Upstream


@pytest.fixture
def upstream():
    u = Upstream("up1")
    yield u
    u.stop()


@pytest.fixture
def make_upstream():
    """Starts more named test upstreams; each is stopped at teardown, whatever happened."""
    started: list[Upstream] = []

    def make(name: str) -> Upstream:
        started.append(Upstream(name))
        return started[-1]
    yield make
    for u in started:
        u.stop()


@pytest.fixture
def start_mesh(tmp_path):
    """Starts greenmesh with a config; at teardown checks it is still alive and stops cleanly."""
    started: list[Greenmesh] = []

    def start(config: dict, log_level: str = "info", env: dict | None = None,
              nofile: int | None = None) -> Greenmesh:
        gm = Greenmesh(config, tmp_path / f"gm{len(started)}", log_level, env, nofile)
        started.append(gm)
        return gm

    yield start
    for gm in started:
        alive = gm.alive()
        rc = gm.stop()
        tracebacks = [e for e in gm.logs() if "exception" in e or e.get("event") == "unparsed"]
        assert alive or gm.stopped_by_test, f"greenmesh died: rc={rc}, log tail: {gm.logs()[-5:]}"
        assert rc == 0, f"greenmesh exited with {rc}"
        assert not tracebacks, f"greenmesh logged errors: {tracebacks[:3]}"


@pytest.fixture(scope="session")
def curl():
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is not installed (scripts/test.sh installs it)")
    return path
