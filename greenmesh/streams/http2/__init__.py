"""HTTP/2: greenmesh's own sans-IO codec (``codec``, ``inbound``, ``state``, ``frames``, with
HPACK and field validation in ``headers``) and its greenlet shell (``connection``, shared by
``server`` and ``client``)."""

from __future__ import annotations

from greenmesh.streams import Match, Protocol
from greenmesh.streams.http2.client import Http2ClientConnection
from greenmesh.streams.http2.frames import PREFACE
from greenmesh.streams.http2.server import server


def match(data: bytes) -> Match:
    n = min(len(data), len(PREFACE))
    if data[:n] != PREFACE[:n]:
        return Match.NO
    return Match.YES if n == len(PREFACE) else Match.AGAIN


PROTOCOL = Protocol(name="http2", match=match, server=server, client=Http2ClientConnection,
                    multiplexed=True, alpn="h2")
