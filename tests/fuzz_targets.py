"""Fuzz targets: every parser greenmesh has, fed bytes it did not expect.

Each target takes bytes and checks the one property that matters for a proxy: any input gives
a well-formed answer (events, a parse error with an HTTP status, a GOAWAY, a codec error, a
config error naming its key) and nothing else escapes. A target that raises anything else, or
an assertion, has found a bug.

The suite runs each on its seed corpus (``tests/fuzz_corpus/<target>/``: seeds and every crash
found, kept as regression inputs) and on a bounded number of mutations
(``tests/test_fuzz.py``). For as long as wanted, coverage-guided with atheris when it can be
installed, else by random mutation of the corpus:

    bash scripts/fuzz.sh TARGET SECONDS
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
ROOT = Path(__file__).resolve().parent.parent


# -- HTTP/1.1 -------------------------------------------------------------------------------
def http1_request(data: bytes) -> None:
    """The request codec, fed in segments of 1-16 bytes (the first byte picks the size and
    whether HTTP/1.0 is accepted)."""
    from greenmesh.streams.http1_codec import DATA, END, HEAD, ParseError, request_parser
    if not data:
        return
    step, body = data[0] % 16 + 1, data[1:]
    parser = request_parser(4096, accept_http10=bool(data[0] & 0x80))
    try:
        for i in range(0, len(body), step):
            parser.feed(body[i:i + step])
            while parser.events:
                kind, payload = parser.events.popleft()
                assert kind in (HEAD, DATA, END)
                if kind == HEAD:
                    assert payload.method and payload.version in ("1.0", "1.1")
                    assert sum(n == b"host" for n, _ in payload.headers) == 1 or \
                        payload.version == "1.0"
    except ParseError as e:
        assert 400 <= e.status < 500, e.status


def http1_response(data: bytes) -> None:
    """The response codec (the first byte: segment size, and whether the request was HEAD),
    then the upstream's close."""
    from greenmesh.streams.http1_codec import ParseError, response_parser
    if not data:
        return
    step, body = data[0] % 16 + 1, data[1:]
    parser = response_parser()
    parser.head_request = bool(data[0] & 0x80)
    try:
        for i in range(0, len(body), step):
            parser.feed(body[i:i + step])
            while parser.events:
                parser.events.popleft()
        parser.feed_eof()
    except ParseError as e:
        assert 400 <= e.status < 500, e.status


# -- HTTP/2 ---------------------------------------------------------------------------------
def http2_server(data: bytes) -> None:
    """A server codec past the preface and SETTINGS: any frames give events, RST_STREAM or one
    GOAWAY (the first byte picks the segment size)."""
    from tests.test_http2_codec import feed, server
    if not data:
        return
    step, wire = data[0] % 32 + 1, data[1:]
    codec, _ = server()
    feed(codec, [wire[i:i + step] for i in range(0, len(wire), step)])


def hpack(data: bytes) -> None:
    """A header block (HPACK) in one HEADERS frame, and again after a first good request (a
    dynamic table in use)."""
    from hpack import Encoder

    from tests.test_http2_codec import GET, feed, frame, server
    codec, _ = server()
    feed(codec, [frame(0x1, 0x5, 1, Encoder().encode(GET)), frame(0x1, 0x5, 3, data)])


# -- bolt -----------------------------------------------------------------------------------
def bolt(data: bytes) -> None:
    """Every xprotocol codec: frames or a CodecError; a decoded frame's headers and routing
    fields read, and it re-encodes."""
    from greenmesh.streams.xprotocol import CodecError
    from greenmesh.streams.xprotocol.bolt import BoltCodec
    codec = BoltCodec()
    buf, offset = bytearray(data), 0
    try:
        while True:
            frame, offset = codec.decode(buf, offset)
            if frame is None:
                return
            assert frame.headers is not None
            if not frame.heartbeat and frame.is_request:
                codec.route_info(frame)
                codec.encode(frame, 7)
    except CodecError:
        pass


# -- configuration --------------------------------------------------------------------------
def config_text(data: bytes) -> None:
    """The YAML loader on any text: a config, or errors each with its key path."""
    from greenmesh.config import ConfigError, load_text
    try:
        load_text(data.decode("utf-8", "replace"), "fuzz.yaml")
    except ConfigError as e:
        _check_errors(e.errors)


# Values a user (or a typo) puts where another was expected.
_VALUES: list[Any] = [None, 0, -1, 1, 2**64, 0.5, -0.5, float("nan"), True, "", "x", "0s",
                      "1s", "-1s", "1.5h", "127.0.0.1:0", "127.0.0.1:99999", "[::1]:80", "*",
                      "/", "(", "[", [], [{}], {}, {"name": "x"}, "bolt", "auto", "round_robin",
                      "maglev", {"prefix": "/"}, {"safe_regex": "("}, 10**6]


def config_values(data: bytes) -> None:
    """A valid config (from etc/) with values replaced, keys dropped or duplicated where the
    bytes say: the structured complement of config_text."""
    from greenmesh.config import ConfigError, load_dict
    seeds = _config_seeds()
    if not data:
        return
    tree = copy.deepcopy(seeds[data[0] % len(seeds)])
    for i in range(1, len(data) - 1, 2):
        nodes = list(_nodes(tree))
        if not nodes:
            break
        parent, key = nodes[data[i] % len(nodes)]
        op = data[i + 1]
        if op < 200:
            parent[key] = copy.deepcopy(_VALUES[op % len(_VALUES)])
        elif op < 230 and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    try:
        load_dict(tree)
    except ConfigError as e:
        _check_errors(e.errors)


def _check_errors(errors: list[str]) -> None:
    assert errors and all(isinstance(line, str) and line.strip() for line in errors), errors


def _nodes(tree: Any):
    """(container, key) of every value in a tree."""
    stack = [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else ()
        for key, value in items:
            yield node, key
            stack.append(value)


_seeds_cache: list[Any] = []


def _config_seeds() -> list[Any]:
    if not _seeds_cache:
        for path in sorted((ROOT / "etc").rglob("*.yaml")):
            tree = yaml.safe_load(path.read_text())
            if isinstance(tree, dict) and tree:
                _seeds_cache.append(tree)
    return _seeds_cache


# -- xDS ------------------------------------------------------------------------------------
def _xds_kinds() -> list[tuple[str, Callable]]:
    from greenmesh.config.clusters import cluster, load_assignment
    from greenmesh.config.listeners import listener
    from greenmesh.config.routes import route_config
    from greenmesh.xds.resources import CDS, EDS, LDS, RDS
    return [(CDS, cluster), (EDS, load_assignment), (LDS, listener), (RDS, route_config)]


def xds(data: bytes) -> None:
    """Any bytes as the value of a resource of each type (the first byte picks it), through
    the same decoding and conversion as the ADS client: a model, or errors to NACK with. An
    EDS resource the fast path takes must convert to what the full path gives."""
    from envoy_data_plane.google.protobuf import Any as AnyMessage

    from greenmesh.config.reader import Reader
    from greenmesh.streams import default_registry
    from greenmesh.xds import fast
    from greenmesh.xds.resources import EDS, DecodeError, decode, load_message_types
    if not data:
        return
    load_message_types()
    kinds = _xds_kinds()
    type_url, build = kinds[data[0] % len(kinds)]
    raw = data[1:]
    try:
        resource = decode(AnyMessage(type_url=type_url, value=raw))
    except DecodeError:
        resource = None
    built = None
    if resource is not None:
        r = Reader(default_registry().names(), strict=False)
        built = build(r, resource, "resource")
        assert built is not None or r.errors, "refused without saying why"
        _check_errors(r.errors or ["ok"])
    if type_url == EDS:
        fast.prepare()
        quick = fast.load_assignment(raw)  # None: left to the full path (and its errors)
        if quick is not None:
            assert built is not None, "the fast path took what the full path refuses"
            assert quick[1] == built, (quick, built)


# -- routing --------------------------------------------------------------------------------
_ROUTES = """
name: fuzz
request_headers_to_add: [{header: {key: x-a, value: b}}]
virtual_hosts:
  - name: exact
    domains: ["api.example.com", "*.example.org", "*-suffix.net", "[::1]:8080"]
    routes:
      - match: {path: /exact}
        route: {cluster: a, prefix_rewrite: /rewritten}
      - match: {prefix: /pre/, headers: [{name: x-v, string_match: {prefix: "1"}}]}
        route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]},
                prefix_rewrite: /}
      - match: {safe_regex: "/re/([a-z]+)/(\\\\d+)", query_parameters: [{name: q}]}
        route: {cluster: a, regex_rewrite: {pattern: {regex: "/re/([a-z]+)"},
                                           substitution: "/\\\\1/x"},
                hash_policy: [{cookie: {name: sess}}, {header: {header_name: x-user}}]}
      - match: {path_separated_prefix: /sep, headers: [{name: x-p, present_match: true}]}
        route: {cluster_header: x-cluster}
      - match: {prefix: /redir}
        redirect: {prefix_rewrite: /new, port_redirect: 8443, strip_query: true}
      - match: {prefix: /}
        direct_response: {status: 200}
  - name: all
    domains: ["*"]
    routes:
      - match: {prefix: "/", case_sensitive: false,
                headers: [{name: x-s, string_match: {suffix: z}},
                          {name: x-i, invert_match: true, string_match: {exact: "no"}}]}
        route: {cluster: a, hash_policy: [{connection_properties: {source_ip: true}}]}
      - match: {prefix: /h, headers: [{name: x-r, safe_regex_match: {regex: "a+b"}}]}
        redirect: {host_redirect: h.example, path_redirect: /p}
"""
_tables: list[Any] = []


def router(data: bytes) -> None:
    """A route table with every matcher kind, matched against any request: a route or none,
    then its cluster, rewrite, hash key and redirect, without an exception."""
    from greenmesh.config.reader import Reader
    from greenmesh.config.routes import route_config
    from greenmesh.router import RouteTable
    from greenmesh.streams import default_registry
    from greenmesh.streams.base import RequestHead
    if not _tables:
        r = Reader(default_registry().names())
        config = route_config(r, yaml.safe_load(_ROUTES), "fuzz")
        assert config is not None, r.errors
        _tables.append(RouteTable(config))
    lines = data.split(b"\n")
    method, path, authority = (lines + [b"", b"", b""])[:3]
    headers = [(n.strip().lower(), v.strip()) for n, _, v in
               (line.partition(b":") for line in lines[3:])]
    head = RequestHead(method or b"GET", path, authority, b"http", headers)
    head.peer = b"10.0.0.1"
    matched = _tables[0].match(head, None)
    if matched is None:
        return
    route = matched.route
    if route.route is not None:
        matched.cluster_name(head)
        matched.rewrite_path(head.path, route.route.prefix_rewrite)
        matched.hash_key(head)
    elif route.redirect is not None:
        assert b"://" in matched.redirect_location(head)


TARGETS: dict[str, Callable[[bytes], None]] = {f.__name__: f for f in (
    http1_request, http1_response, http2_server, hpack, bolt, config_text, config_values, xds,
    router)}


# -- running outside the suite --------------------------------------------------------------
def corpus(name: str) -> list[bytes]:
    d = CORPUS / name
    return [p.read_bytes() for p in sorted(d.iterdir())] if d.is_dir() else []


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few byte-level edits (flip, insert, delete, repeat a slice, splice an interesting
    value), as a mutation fuzzer's first rounds do."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and out:
            del out[at:at + rng.randint(1, 16)]
        elif op == 3 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randint(1, 32)]
        else:
            out[at:at] = rng.choice([b"\x00", b"\xff", b"\r\n", b"\r\n\r\n", b"0\r\n\r\n",
                                     b"\x7f\xff\xff\xff", b"-1", b":", b"%", b"\x80"])
    return bytes(out)


def _save_crash(name: str, data: bytes) -> Path:
    d = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def run_random(name: str, seconds: float, seed: int | None = None) -> int:
    """Mutates the corpus for ``seconds``; saves the first crash into the corpus (so it
    becomes a regression test) and returns 1, else 0."""
    target = TARGETS[name]
    rng = random.Random(seed)
    pool = corpus(name) or [b""]
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = mutate(rng.choice(pool), rng)
        runs += 1
        try:
            target(data)
        except Exception:
            path = _save_crash(name, data)
            import traceback
            traceback.print_exc()
            sys.stderr.write(f"fuzz: {name} crashed after {runs} inputs; input saved as {path}\n")
            return 1
    sys.stderr.write(f"fuzz: {name}: {runs} inputs in {seconds:g}s, no crash\n")
    return 0


def run_atheris(name: str, seconds: float) -> int:
    import atheris
    with atheris.instrument_imports():
        import greenmesh.config  # noqa: F401
        import greenmesh.router  # noqa: F401
        import greenmesh.streams.http1_codec  # noqa: F401
        import greenmesh.streams.http2.codec  # noqa: F401
        import greenmesh.streams.xprotocol.bolt  # noqa: F401
    target = TARGETS[name]
    crashes = CORPUS / name
    crashes.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("FUZZ_WORKDIR", f"/tmp/greenmesh-fuzz-{name}"))
    work.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-timeout=10",
                   f"-artifact_prefix={crashes}/crash-", str(work), str(crashes)], target)
    atheris.Fuzz()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in TARGETS:
        sys.stderr.write(f"usage: fuzz.sh TARGET SECONDS (targets: {', '.join(TARGETS)})\n")
        return 2
    name, seconds = argv[0], float(argv[1])
    if os.environ.get("FUZZ_ENGINE", "atheris") == "atheris":
        try:
            import atheris  # noqa: F401
        except ImportError:
            sys.stderr.write("fuzz: atheris is not installed: random mutation instead\n")
        else:
            return run_atheris(name, seconds)
    return run_random(name, seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
