"""Route tables and load balancers, without sockets (they are pure)."""

from __future__ import annotations

from collections import Counter

from greenmesh import model
from greenmesh.lb import RoundRobin
from greenmesh.router import RouteTable
from greenmesh.streams.base import RequestHead


def table(*vhosts: tuple[str, tuple[str, ...], list[tuple[str, str]]]) -> RouteTable:
    return RouteTable(model.RouteConfig("t", tuple(
        model.VirtualHost(name, domains, tuple(
            model.Route(model.RouteMatch(prefix=v) if k == "prefix" else model.RouteMatch(path=v),
                        model.RouteAction(f"{name}{v}")) for k, v in routes))
        for name, domains, routes in vhosts)))


def pick(t: RouteTable, host: str, path: str) -> str | None:
    r = t.match(RequestHead(b"GET", path.encode(), host.encode(), b"http", []))
    return r.route.cluster if r else None


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
