"""SIGHUP reloads the config file: a bad file is refused with its key paths and the old config
serves on; a good one is applied with what did not change left alone (connections and pools
survive), under load, losing no request."""

from __future__ import annotations

import copy
import http.client
import signal
import threading

import pytest
import yaml

from tests.harness import free_port, mesh_config, until

pytestmark = pytest.mark.source_only  # config, xDS, admin, workers, reload: see conftest.py


class KeepAliveLoad:
    """One keep-alive connection sending GET / until stopped; every status kept."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.statuses) < 100_000:
            try:
                self.conn.request("GET", "/")
                resp = self.conn.getresponse()
                resp.read()
                self.statuses.append(resp.status)
            except Exception as e:  # counted: the test asserts there are none
                self.errors.append(repr(e))
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.close()


def hup(gm, config: dict | str) -> None:
    gm.path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    gm.proc.send_signal(signal.SIGHUP)


def test_sighup_bad_then_good_under_load_loses_nothing(upstream, start_mesh):
    cfg = mesh_config([upstream.address])
    gm = start_mesh(cfg)
    load = KeepAliveLoad(gm.port())
    assert until(lambda: len(load.statuses) >= 20)

    bad = copy.deepcopy(cfg)
    del bad["listeners"][0]["address"]
    bad["clusters"][0]["lb_policy"] = "fastest"
    hup(gm, bad)
    [refused] = gm.wait_log("config_reload_refused")
    assert refused["level"] == "error"
    assert "listeners[0].address: required" in refused["errors"]
    assert any(e.startswith("clusters[0].lb_policy:") for e in refused["errors"])
    served = len(load.statuses)
    assert until(lambda: len(load.statuses) > served + 20)  # the old config serves on

    good = copy.deepcopy(cfg)
    good["route_configs"][0]["virtual_hosts"][0]["routes"].insert(0, {
        "match": {"prefix": "/new"}, "direct_response": {"status": 201, "body": "reloaded"}})
    second = f"127.0.0.1:{free_port()}"
    good["listeners"].append({**good["listeners"][0], "name": "second", "address": second})
    hup(gm, good)
    [applied] = gm.wait_log("config_reloaded")
    assert applied["route_configs"] == ["default"] and applied["listeners"] == ["second"]
    assert "clusters" not in applied  # unchanged: its pool is the same
    served = len(load.statuses)
    assert until(lambda: len(load.statuses) > served + 20)
    load.stop()
    assert load.errors == [] and set(load.statuses) == {200}
    # The keep-alive connection lived through both signals, and so did the pool's one
    # upstream connection.
    stats = gm.stats()
    assert stats["listener.ingress.downstream_cx_total"] == 1 + 1  # + the harness's probe
    assert stats["cluster.backend.upstream_cx_total"] == 1
    for port in (gm.port(), int(second.rsplit(":", 1)[1])):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/new")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (201, b"reloaded")
        conn.close()


def test_sighup_applies_a_changed_cluster_and_drains_a_removed_listener(upstream,
                                                                        make_upstream,
                                                                        start_mesh):
    other = make_upstream("up2")
    cfg = mesh_config([upstream.address])
    cfg["listeners"].append({**cfg["listeners"][0], "name": "gone",
                             "address": f"127.0.0.1:{free_port()}"})
    gm = start_mesh(cfg)
    new = copy.deepcopy(cfg)
    new["listeners"].pop()
    new["clusters"][0]["endpoints"] = [{"address": other.address}]
    hup(gm, new)
    [applied] = gm.wait_log("config_reloaded")
    assert (applied["clusters"], applied["listeners"]) == (["backend"], ["gone"])
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.read() == b"hello from up2\n"
    conn.close()
    import socket

    def closed() -> bool:
        try:
            socket.create_connection(("127.0.0.1", gm.port(1)), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False
    assert until(closed)
