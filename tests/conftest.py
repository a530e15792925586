from __future__ import annotations

import os
import shutil

import pytest

from tests.harness import Greenmesh, Upstream


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "source_only: runs on the Python source only, not again on the compiled "
        "build: it tests what is never compiled (config, xDS, admin, workers, reload); the "
        "data path it drives on the way is tested in both runs by the other tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The compiled run (GREENMESH_COMPILED=1, scripts/test.sh) leaves out source_only tests,
    which keeps the whole suite under CI's 10 minutes."""
    if os.environ.get("GREENMESH_COMPILED") != "1":
        return
    kept = [item for item in items if item.get_closest_marker("source_only") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


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
