"""The sans-IO HTTP/1.1 codec: bytes in, events out, no sockets."""

from __future__ import annotations

import pytest

from greenmesh.streams.http1_codec import (
    DATA,
    END,
    HEAD,
    ParseError,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    request_parser,
    response_parser,
)


def feed_all(parser, data: bytes, step: int = 0) -> list:
    if step:
        for i in range(0, len(data), step):
            parser.feed(data[i:i + step])
    else:
        parser.feed(data)
    return parser.events.take_all()


def summary(events: list) -> list:
    out = []
    for kind, payload in events:
        if kind == HEAD:
            out.append(("head", payload.method or payload.status, payload.target))
        elif kind == DATA:
            out.append(("data", bytes(payload)))
        else:
            out.append(("end", payload))
    return out


CHUNKED = (b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n")


@pytest.mark.parametrize("step", [0, 1, 7])
def test_chunked_request_with_trailers_in_any_split(step):
    events = feed_all(request_parser(8192), CHUNKED, step)
    heads = [e for e in events if e[0] == HEAD]
    assert heads[0][1].headers == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    assert heads[0][1].chunked and heads[0][1].keep_alive
    body = b"".join(bytes(p) for k, p in events if k == DATA)
    assert body == b"hello world"
    assert events[-1] == (END, [(b"x-sum", b"42")])


def test_pipelined_requests_queue_in_order():
    p = request_parser(8192)
    events = feed_all(p, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n"
                         b"Connection: close\r\n\r\n")
    assert summary(events) == [("head", b"GET", b"/1"), ("end", None),
                               ("head", b"GET", b"/2"), ("end", None)]
    assert events[0][1].keep_alive and not events[2][1].keep_alive


def test_http10_is_not_keep_alive():
    (_, head), _ = feed_all(request_parser(8192, accept_http10=True), b"GET / HTTP/1.0\r\n\r\n")
    assert head.version == "1.0" and not head.keep_alive


@pytest.mark.parametrize(("bad", "status", "why"), [
    (b"GET /\r\n\r\n", 400, "HTTP/0.9 is not supported"),
    (b"GET / HTTP/1.0\r\n\r\n", 426, "HTTP/1.0 is not accepted here (accept_http_10)"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing host header"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one host header"),
])
def test_requests_a_proxy_must_refuse(bad, status, why):
    """RFC 9112 as Envoy applies it: no HTTP/0.9, HTTP/1.0 only when the listener accepts it,
    exactly one Host in HTTP/1.1."""
    with pytest.raises(ParseError) as e:
        request_parser(8192).feed(bad)
    assert (e.value.status, str(e.value)) == (status, why)


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\n\r\n",
])
def test_smuggling_shapes_are_refused(bad):
    with pytest.raises(ParseError) as e:
        request_parser(8192).feed(bad)
    assert e.value.status == 400


def test_header_limits_answer_431():
    with pytest.raises(ParseError) as e:
        request_parser(1024).feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n")
    assert e.value.status == 431
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    with pytest.raises(ParseError) as e:
        request_parser(65536).feed(b"GET / HTTP/1.1\r\n" + many + b"\r\n")
    assert e.value.status == 431


def test_error_behind_good_request_is_held_back():
    p = request_parser(8192)
    p.feed(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03garbage")
    assert summary(p.events.take_all()) == [("head", b"GET", b"/ok"), ("end", None)]
    assert p.error is not None and p.error.status == 400


def test_response_close_delimited_and_informational():
    p = response_parser()
    events = feed_all(p, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nstream")
    assert summary(events)[:4] == [("head", 103, b""), ("end", None), ("head", 200, b""),
                                   ("data", b"stream")]
    assert p.feed_eof() and p.events.take_all() == [(END, None)]


def test_response_to_head_has_no_body_and_parser_carries_on():
    p = response_parser()
    p.head_request = True
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert summary(p.events.take_all()) == [("head", 200, b""), ("end", None)]
    assert p.clean_stop
    p.head_request = False
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert summary(p.events.take_all()) == [("head", 200, b""), ("data", b"ok"), ("end", None)]


def test_no_body_statuses():
    p = response_parser()
    p.feed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert summary(p.events.take_all()) == [("head", 304, b""), ("end", None), ("head", 204, b""),
                                       ("end", None)]


def test_upgrade_keeps_the_bytes_after_the_head():
    p = request_parser(8192)
    p.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
           b"\x81\x05hello")
    (_, head), end = p.events.take_all()
    assert head.upgrade and end == (END, None)
    assert p.upgrade_data == b"\x81\x05hello"


def test_encoders_round_trip_through_the_parser():
    wire = (encode_request_head(b"PUT", b"/x?y=1", b"svc", [(b"a", b"1")], chunked=True)
            + encode_chunk(b"abc") + encode_last_chunk([(b"t", b"2")]))
    events = list(feed_all(request_parser(8192), wire))
    head = events[0][1]
    assert (head.method, head.target) == (b"PUT", b"/x?y=1")
    assert head.headers == [(b"host", b"svc"), (b"a", b"1"), (b"transfer-encoding", b"chunked")]
    assert events[1:] == [(DATA, b"abc"), (END, [(b"t", b"2")])]
