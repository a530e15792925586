"""The sans-IO HTTP/2 codec on its own: any input yields events, a stream reset or a GOAWAY,
never an exception out of the codec (property tests, bounded), and what it costs to keep
(memory bounded by open streams)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenmesh.streams.http2.codec import H2Codec
from greenmesh.streams.http2.frames import GOAWAY, PREFACE, RECENTLY_CLOSED, RST_STREAM
from greenmesh.streams.http2.state import ConnectionError_

FRAME = struct.Struct(">BHBBL")
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t"), (b":path", b"/")]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def __getattr__(self, name: str):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.seen.append((name, *args))


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 16, n & 0xFFFF, kind, flags, sid) + payload


def frames_out(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, i = [], 0
    while i + 9 <= len(data):
        hi, lo, kind, flags, sid = FRAME.unpack_from(data, i)
        n = (hi << 16) | lo
        out.append((kind, flags, sid, data[i + 9:i + 9 + n]))
        i += 9 + n
    return out


def server() -> tuple[H2Codec, Events]:
    ev = Events()
    codec = H2Codec(ev, client=False, max_header_list_size=8192)
    codec.initiate()
    codec.receive(PREFACE + frame(0x4, 0, 0, b""))
    codec.data_to_send()
    return codec, ev


def client() -> tuple[H2Codec, Events]:
    ev = Events()
    codec = H2Codec(ev, client=True)
    codec.initiate()
    codec.receive(frame(0x4, 0, 0, b""))
    codec.data_to_send()
    return codec, ev


def feed(codec: H2Codec, chunks: list[bytes]) -> None:
    """The property: the codec either takes the input or says GOAWAY; nothing else escapes."""
    for chunk in chunks:
        try:
            codec.receive(chunk)
        except ConnectionError_:
            assert any(kind == GOAWAY for kind, *_ in frames_out(codec.data_to_send())), \
                "a connection error without its GOAWAY"
            return
        codec.data_to_send()


frames = st.builds(
    frame,
    kind=st.integers(0, 11),
    flags=st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25, 0xFF]),
    sid=st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
    payload=st.binary(max_size=40),
)
SETTINGS = dict(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@settings(**SETTINGS)
@given(st.lists(frames, max_size=12), st.integers(1, 17))
def test_any_frames_to_a_server(sequence, split):
    codec, _ = server()
    wire = b"".join(sequence)
    feed(codec, [wire[i:i + split] for i in range(0, len(wire), split)])


@settings(**SETTINGS)
@given(st.lists(frames, max_size=12))
def test_any_frames_to_a_client_with_streams_open(sequence):
    codec, _ = client()
    for _ in range(3):
        codec.send_headers(codec.open_stream(), GET, True)
    codec.data_to_send()
    feed(codec, sequence)


@settings(**SETTINGS)
@given(st.binary(max_size=300))
def test_any_bytes_after_the_preface(data):
    codec, _ = server()
    feed(codec, [data])


@settings(**SETTINGS)
@given(st.binary(max_size=200))
def test_any_header_block(block):
    codec, ev = server()
    feed(codec, [frame(0x1, 0x5, 1, block)])  # HEADERS, END_STREAM | END_HEADERS


def test_a_good_request_then_a_malformed_one_on_the_same_connection():
    from hpack import Encoder
    codec, ev = server()
    enc = Encoder()
    codec.receive(frame(0x1, 0x5, 1, enc.encode(GET)))
    codec.receive(frame(0x1, 0x5, 3, enc.encode([*GET, (b"Bad", b"x")])))
    out = frames_out(codec.data_to_send())
    assert [e[0] for e in ev.seen if e[0] != "on_settings"] == ["on_headers", "on_refused"]
    assert (RST_STREAM, 0, 3, b"\x00\x00\x00\x01") in out  # PROTOCOL_ERROR on 3 only
    assert not [f for f in out if f[0] == GOAWAY]


def test_memory_is_bounded_by_open_streams_not_streams_ever_opened():
    from hpack import Encoder
    codec, ev = server()
    enc = Encoder()
    for sid in range(1, 2 * 5000, 2):
        codec.receive(frame(0x1, 0x5, sid, enc.encode(GET)))
        codec.send_headers(sid, [(b":status", b"200")], True)
        codec.release(sid)
        codec.data_to_send()
    assert not codec.streams and len(codec._recently_closed) == RECENTLY_CLOSED


_names = st.sampled_from([b":method", b":path", b":scheme", b":authority", b":status",
                          b"content-length", b"te", b"connection", b"X-Up", b"x-ok", b"cookie"])
_values = st.sampled_from([b"GET", b"POST", b"/", b"http", b"5", b"0", b"trailers", b"a\r\nb",
                           b" x", b"", b"x" * 300])
_sids = st.sampled_from([0, 1, 3, 5, 2])
_actions = st.one_of(
    st.tuples(st.just("headers"), _sids, st.lists(st.tuples(_names, _values), max_size=6),
              st.integers(0, 0x2D)),
    st.tuples(st.just("data"), _sids, st.binary(max_size=12), st.integers(0, 9)),
    st.tuples(st.just("rst"), _sids, st.integers(0, 14)),
    st.tuples(st.just("window"), _sids, st.integers(0, 2**31 - 1)),
    st.tuples(st.just("settings"), st.integers(0, 7), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("priority"), _sids, st.integers(0, 7)),
)


def _build(action, encoder) -> bytes:
    kind, sid, *rest = action
    if kind == "headers":
        fields, flags = rest
        return frame(0x1, flags & ~0x28, sid, encoder.encode(fields))  # no padding/priority
    if kind == "data":
        payload, flags = rest
        return frame(0x0, flags & 0x1, sid, payload)
    if kind == "rst":
        return frame(0x3, 0, sid, rest[0].to_bytes(4, "big"))
    if kind == "window":
        return frame(0x8, 0, sid, rest[0].to_bytes(4, "big"))
    if kind == "settings":
        return frame(0x4, 0, 0, struct.pack(">HL", sid, rest[0]))
    return frame(0x2, 0, sid, rest[0].to_bytes(4, "big") + b"\x10")


@settings(**SETTINGS)
@given(st.lists(_actions, max_size=15))
def test_semantic_frame_sequences_to_a_server(actions):
    from hpack import Encoder
    codec, _ = server()
    enc = Encoder()
    for action in actions:
        wire = _build(action, enc)
        try:
            codec.receive(wire)
        except ConnectionError_:
            assert any(k == GOAWAY for k, *_ in frames_out(codec.data_to_send()))
            return
        for sid in list(codec.streams):  # the shell answers and lets go of what it was given
            if codec.remote_ended(sid):
                codec.send_headers(sid, [(b":status", b"200")], True)
                codec.release(sid)
        codec.data_to_send()


def _nginx_like(fields: list[tuple[bytes, bytes]]) -> bytes:
    """Literals with incremental indexing and a literal name, never a dynamic reference (as
    nginx writes its response fields)."""
    out = b""
    for name, value in fields:
        out += b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return out


@settings(**SETTINGS)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.tuples(
    st.sampled_from([b"server", b"date", b"x-a", b"x-b"]),
    st.sampled_from([b"1", b"2", b"nginx", b"x" * 60])), min_size=1, max_size=4)),
    max_size=30))
def test_cached_decoding_matches_hpack_exactly(blocks):
    """The caches give what hpack alone gives, and leave the dynamic table as it would."""
    from hpack import Decoder, Encoder

    from greenmesh.streams.http2.headers import HeaderCodec
    enc, reference, ours = Encoder(), Decoder(), HeaderCodec(1 << 16)
    for literal, fields in blocks:
        block = _nginx_like(fields) if literal else enc.encode(fields)
        for _ in range(2):  # each block twice: the second may come from a cache
            expected = [(n, v) for n, v in reference.decode(block, raw=True)]
            assert ours.decode(block) == expected
            assert list(ours.decoder.header_table.dynamic_entries) == \
                list(reference.header_table.dynamic_entries)
