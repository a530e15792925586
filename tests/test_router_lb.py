"""Route tables and load balancers, without sockets (they are pure)."""

from __future__ import annotations

from collections import Counter

import pytest

from greenmesh import model
from greenmesh.router import RouteTable
from greenmesh.streams.base import RequestHead
from greenmesh.upstream.lb import RoundRobin


def table(*vhosts: tuple[str, tuple[str, ...], list[tuple[str, str]]]) -> RouteTable:
    return RouteTable(model.RouteConfig("t", tuple(
        model.VirtualHost(name, domains, tuple(
            model.Route(model.RouteMatch(prefix=v) if k == "prefix" else model.RouteMatch(path=v),
                        model.RouteAction(f"{name}{v}")) for k, v in routes))
        for name, domains, routes in vhosts)))


def pick(t: RouteTable, host: str, path: str) -> str | None:
    r = t.match(RequestHead(b"GET", path.encode(), host.encode(), b"http", []))
    return r.route.route.cluster if r else None


def test_virtual_host_order_exact_then_longest_suffix_then_star():
    t = table(("exact", ("api.example.com",), [("prefix", "/")]),
              ("short", ("*.com",), [("prefix", "/")]),
              ("long", ("*.example.com",), [("prefix", "/")]),
              ("star", ("*",), [("prefix", "/")]))
    assert pick(t, "api.example.com", "/") == "exact/"
    assert pick(t, "API.Example.com:8080", "/") == "exact/"  # case and port ignored
    assert pick(t, "www.example.com", "/") == "long/"
    assert pick(t, "example.com", "/") == "short/"  # *.example.com needs a label before it
    assert pick(t, "other.org", "/") == "star/"
    assert pick(t, "[::1]:80", "/") == "star/"


def test_no_default_host_means_no_route():
    t = table(("only", ("a.com",), [("prefix", "/")]))
    assert pick(t, "b.com", "/") is None


def test_routes_first_match_wins_prefix_and_exact():
    t = table(("v", ("*",), [("path", "/exact"), ("prefix", "/api/"), ("prefix", "/")]))
    assert pick(t, "h", "/exact") == "v/exact"
    assert pick(t, "h", "/exact?q=1") == "v/exact"  # the query is not part of the path
    assert pick(t, "h", "/exactly") == "v/"
    assert pick(t, "h", "/api/x") == "v/api/"
    assert pick(t, "h", "/API/x") == "v/"  # case-sensitive, like Envoy's default
    t2 = table(("v", ("*",), [("prefix", "/api")]))
    assert pick(t2, "h", "/other") is None


class H:
    def __init__(self, name: str, weight: int = 1):
        self.name, self.weight = name, weight


def test_round_robin_even():
    lb = RoundRobin([H("a"), H("b"), H("c")])
    assert [lb.pick().name for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert RoundRobin([]).pick() is None


def test_round_robin_weighted_is_exact_and_interleaved():
    lb = RoundRobin([H("a", 1), H("b", 3), H("c", 6)])
    picks = [lb.pick().name for _ in range(1000)]
    assert Counter(picks) == {"a": 100, "b": 300, "c": 600}
    # Smooth: the heavy host never takes long runs while others wait.
    longest = max(len(run) for run in "".join(picks).replace("a", " ").replace("b", " ").split())
    assert longest <= 3


def header_table(matchers: list[dict]) -> RouteTable:
    """A route config built through the YAML loader, so the config spellings are tested too."""
    from greenmesh.config import load_dict
    cfg = load_dict({
        "route_configs": [{"name": "t", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"headers": [m]}, "route": {"cluster": f"c{i}"}}
            for i, m in enumerate(matchers)]}]}],
        "clusters": [{"name": f"c{i}"} for i in range(len(matchers))]})
    return RouteTable(cfg.route_configs[0])


def which(t: RouteTable, headers: dict[str, str]) -> str | None:
    head = RequestHead(b"GET", b"/", b"h", b"http",
                       [(k.encode(), v.encode()) for k, v in headers.items()])
    r = t.match(head)
    return r.route.route.cluster if r else None


def test_header_matchers_v3_and_legacy_spellings():
    svc = "com.example.EchoService:1.0"
    for form in ({"string_match": {"exact": svc}}, {"exact_match": svc}):
        t = header_table([{"name": "Service", **form}])  # names are case-insensitive
        assert which(t, {"service": svc}) == "c0"
        assert which(t, {"service": svc + "x"}) is None and which(t, {}) is None
    for form, yes, no in (
            ({"string_match": {"prefix": "com.example."}}, "com.example.A", "org.A"),
            ({"prefix_match": "com.example."}, "com.example.A", "org.A"),
            ({"string_match": {"suffix": ":1.0"}}, "x:1.0", "x:2.0"),
            ({"suffix_match": ":1.0"}, "x:1.0", "x:2.0"),
            ({"string_match": {"safe_regex": {"regex": "com\\.[a-z]+\\.E.*"}}}, "com.ex.Echo",
             "xcom.ex.Echo"),  # a full match, not a search
            ({"safe_regex_match": {"regex": "v[0-9]+"}}, "v12", "v12a")):
        t = header_table([{"name": "service", **form}])
        assert which(t, {"service": yes}) == "c0", form
        assert which(t, {"service": no}) is None, form


def test_header_presence_and_invert():
    t = header_table([{"name": "x-canary"}])  # present
    assert which(t, {"x-canary": "anything"}) == "c0" and which(t, {}) is None
    t = header_table([{"name": "x-canary", "present_match": False}])
    assert which(t, {}) == "c0" and which(t, {"x-canary": "1"}) is None
    t = header_table([{"name": "env", "exact_match": "prod", "invert_match": True}])
    assert which(t, {"env": "dev"}) == "c0" and which(t, {}) == "c0"
    assert which(t, {"env": "prod"}) is None


def test_header_matcher_config_errors():
    from greenmesh.config import ConfigError, load_dict
    bad = [{"name": "a", "exact_match": "x", "prefix_match": "y"},
           {"name": "b", "safe_regex_match": {"regex": "("}},
           {"name": "c", "string_match": {"contains": "x"}}]
    with pytest.raises(ConfigError) as e:
        load_dict({"route_configs": [{"name": "t", "virtual_hosts": [
            {"name": "v", "domains": ["*"], "routes": [
                {"match": {"headers": bad}, "route": {"cluster": "c"}}]}]}],
                   "clusters": [{"name": "c"}]})
    p = "route_configs[0].virtual_hosts[0].routes[0].match.headers"
    assert e.value.errors[0] == f"{p}[0]: expected one matcher (string_match with one of " \
                                "exact, prefix, suffix, safe_regex; or a legacy *_match key)"
    assert e.value.errors[1].startswith(f"{p}[1].safe_regex_match: invalid regex")
    assert e.value.errors[2].startswith(f"{p}[2].string_match.contains: unknown key")


class AH:
    """A host with requests in flight, for least_request."""

    def __init__(self, name: str, weight: int = 1, active: int = 0):
        self.name, self.weight, self.active, self.address = name, weight, active, name


def test_random_follows_weights():
    from greenmesh.upstream.lb import Random
    lb = Random([H("a", 1), H("b", 3)])
    counts = Counter(lb.pick().name for _ in range(20000))
    assert abs(counts["b"] / 20000 - 0.75) < 0.02, counts


def test_least_request_prefers_idle_hosts():
    from greenmesh.upstream.lb import LeastRequest
    hosts = [AH("busy", active=50), AH("idle1"), AH("idle2")]
    counts = Counter(LeastRequest(hosts).pick().name for _ in range(3000))
    # Power of two choices: "busy" wins only when both picks are "busy" (1/9 of the time).
    assert counts["busy"] / 3000 < 0.16 and counts["idle1"] > 900 and counts["idle2"] > 900


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hashing_is_sticky_even_and_consistent(policy):
    from greenmesh.upstream.lb import POLICIES, stable_hash
    hosts = [AH(f"10.0.0.{i}:80") for i in range(5)]
    lb = POLICIES[policy](hosts)
    keys = [stable_hash(b"user-%d" % i) for i in range(5000)]
    first = [lb.pick(k).name for k in keys]
    assert first == [lb.pick(k).name for k in keys]  # the same key, the same host
    share = Counter(first)
    assert all(600 < n < 1400 for n in share.values()), share  # spread over all hosts
    smaller = POLICIES[policy](hosts[:4])  # one host leaves: mostly only its keys move
    moved = sum(1 for k, h in zip(keys, first, strict=True)
                if h != hosts[4].name and smaller.pick(k).name != h)
    assert moved / len(keys) < 0.2, moved
    assert POLICIES[policy]([AH("w1", weight=1), AH("w3", weight=3)]).pick(keys[0]) is not None


def test_priority_levels_spill_over_as_envoy():
    from greenmesh.upstream.lb import RoundRobin
    from greenmesh.upstream.priority import PriorityLoad

    class P(AH):
        def __init__(self, name: str, priority: int):
            super().__init__(name)
            self.priority = priority
    hosts = [P("a0", 0), P("b0", 0), P("a1", 1), P("b1", 1)]
    lb = PriorityLoad(hosts, hosts, RoundRobin)
    assert {lb.pick().name for _ in range(200)} == {"a0", "b0"}  # level 0 takes all
    half = PriorityLoad(hosts, [h for h in hosts if h.name != "b0"], RoundRobin)
    counts = Counter(half.pick().priority for _ in range(10000))
    # Level 0 at 50% available x 1.4 overprovisioning takes 70%; level 1 the rest.
    assert abs(counts[0] / 10000 - 0.7) < 0.03, counts


def test_eds_localities_and_priorities_convert():
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )

    from greenmesh.config.clusters import load_assignment
    from tests.harness import convert_resource
    from tests.test_xds import addr

    def loc(weight, priority, *hosts):
        return LocalityLbEndpoints(load_balancing_weight=weight, priority=priority,
                                   lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=addr(h)))
                                                 for h in hosts])
    cla = ClusterLoadAssignment(cluster_name="c", endpoints=[
        loc(1, 0, "10.0.0.1:80"), loc(3, 0, "10.0.0.2:80", "10.0.0.3:80"),
        loc(1, 1, "10.0.1.1:80")])
    eps, _ = convert_resource(load_assignment, cla)
    weights = {e.address.host: (e.weight, e.priority) for e in eps}
    # The 3x locality splits its weight over two hosts: 1500 each against 1000.
    assert weights == {"10.0.0.1": (1000, 0), "10.0.0.2": (1500, 0), "10.0.0.3": (1500, 0),
                       "10.0.1.1": (1000, 1)}
