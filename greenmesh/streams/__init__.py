"""The protocol registry: protocol name -> how to serve it, how to be its client, how to spot it.

A listener with ``protocol: auto`` asks each candidate's ``match`` about the first bytes of a
connection, in the configured order; there is no if-chain over protocols anywhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from greenmesh import model
from greenmesh.conn import Conn
from greenmesh.streams.base import (
    ClientConnection,
    ServerConnection,
    ServerOptions,
    StreamHandler,
)


class Match(enum.Enum):
    YES = "yes"
    NO = "no"
    AGAIN = "again"  # not enough bytes yet to tell


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    match: Callable[[bytes], Match]
    #: The server side of a downstream connection (its listener runs and drains it).
    server: Callable[[Conn, ServerOptions, StreamHandler], ServerConnection]
    client: Callable[[Conn, model.Cluster | None], ClientConnection]
    #: Multiplexed protocols share an upstream connection between streams.
    multiplexed: bool = False
    #: The TLS ALPN protocol id ("h2", "http/1.1"), if the protocol has one.
    alpn: str | None = None
    #: What to answer first bytes no protocol claims but that look like this one's (HTTP/1.1:
    #: a 400 to text), or None.
    refusal: Callable[[bytes], bytes | None] | None = None


class Registry:
    def __init__(self) -> None:
        self._protocols: dict[str, Protocol] = {}

    def register(self, protocol: Protocol) -> None:
        self._protocols[protocol.name] = protocol

    def get(self, name: str) -> Protocol:
        try:
            return self._protocols[name]
        except KeyError:
            raise KeyError(f"unknown protocol {name!r} (known: {', '.join(self.names())})") from None

    def names(self) -> list[str]:
        return list(self._protocols)

    def refusal(self, data: bytes, candidates: Iterable[str]) -> bytes | None:
        """The answer of the first candidate that recognises ``data`` as a botched attempt
        at its protocol (every candidate said NO)."""
        for name in candidates:
            refuse = self._protocols[name].refusal
            answer = refuse(data) if refuse is not None else None
            if answer is not None:
                return answer
        return None

    def by_alpn(self, alpn: str | None) -> Protocol | None:
        for protocol in self._protocols.values():
            if alpn is not None and protocol.alpn == alpn:
                return protocol
        return None

    def detect(self, data: bytes, candidates: Iterable[str]) -> Protocol | Match:
        """The first candidate that matches, Match.AGAIN if one might with more bytes, else NO."""
        undecided = False
        for name in candidates:
            protocol = self._protocols[name]
            m = protocol.match(data)
            if m is Match.YES:
                return protocol
            undecided = undecided or m is Match.AGAIN
        return Match.AGAIN if undecided else Match.NO


def default_registry() -> Registry:
    """A fresh registry holding the built-in protocols (a new one per Mesh: no shared state)."""
    from greenmesh.streams import http1, http2
    from greenmesh.streams.xprotocol import bolt

    registry = Registry()
    registry.register(http2.PROTOCOL)  # first: its preface is unambiguous
    registry.register(bolt.PROTOCOL)  # then binary: protocol, type, command code and version
    registry.register(http1.PROTOCOL)
    return registry
