"""xprotocol: RPC protocols framed by request id (SOFA bolt first), MOSN's idea.

A protocol implements ``XCodec`` in one module, sans-IO: spot it in the first bytes, decode a
frame from a buffer (or say it needs more), rewrite a frame's request id, and build heartbeats
and error responses. Everything else is written once in ``stream.py``: demultiplexing by id on
both sides, id allocation upstream, heartbeats, errors mapped from the proxy's outcomes, and
the proxy, router and pools are the same as for HTTP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Final, Generic, TypeVar

from greenmesh.failures import ResponseFlag
from greenmesh.streams import Match
from greenmesh.streams.base import Headers


class CodecError(Exception):
    """Bytes that are not this protocol; ``request_id`` if the frame got that far."""

    def __init__(self, message: str, request_id: int = 0):
        super().__init__(message)
        self.request_id = request_id


class XFrame(ABC):
    """A decoded frame. ``raw`` is the whole encoded frame, so it can be forwarded as is (with
    its request id patched) unless its header map was edited."""

    __slots__ = ("raw", "request_id", "is_request", "oneway", "heartbeat")

    raw: bytes
    request_id: int
    is_request: bool
    oneway: bool
    heartbeat: bool

    @property
    @abstractmethod
    def headers(self) -> Headers:
        """The header map, names lowercased (as the router and filters see headers); the
        codec keeps each name's own case when it encodes the map again."""


FrameT = TypeVar("FrameT", bound=XFrame)
#: The largest RPC frame unless a listener says otherwise: a bigger one is taken for garbage
#: rather than buffered.
MAX_FRAME: Final = 16 << 20


class XCodec(ABC, Generic[FrameT]):
    name: str
    #: The largest request id; ids are allocated from 1 and wrap back to 1.
    max_request_id: int = 2**32 - 1
    #: The pool mode: many requests per upstream connection, or one at a time (for protocols
    #: whose servers cannot take out-of-order responses).
    multiplexed: bool = True

    @abstractmethod
    def match(self, data: bytes) -> Match:
        """Yes / need more bytes / no, from the first bytes a client sends."""

    @abstractmethod
    def decode(self, buf: bytearray, offset: int, limit: int = MAX_FRAME
               ) -> tuple[FrameT | None, int]:
        """The frame at ``offset`` and the offset after it, or (None, offset) if incomplete.
        Raises CodecError for bytes that cannot be this protocol, and for a frame longer than
        ``limit`` (known from its header, so never buffered)."""

    @abstractmethod
    def encode(self, frame: FrameT, request_id: int, headers: Headers | None = None
               ) -> bytes | bytearray:
        """The frame's bytes under ``request_id``; with ``headers``, its header map replaced
        by them (route or filter header operations), the rest unchanged."""

    @abstractmethod
    def heartbeat(self, request_id: int) -> bytes: ...

    @abstractmethod
    def heartbeat_reply(self, frame: FrameT) -> bytes: ...

    @abstractmethod
    def error_response(self, request_id: int, flag: ResponseFlag | None, status: int,
                       request: FrameT | None = None) -> bytes:
        """greenmesh's own answer: the protocol's status for the flag (Envoy's response flag:
        why greenmesh answers), or for the HTTP status when there is no flag."""

    @abstractmethod
    def route_info(self, frame: FrameT) -> tuple[bytes, bytes, bytes]:
        """(service, method, target application) for the router; it sees the frame's
        ``headers`` too."""

    @abstractmethod
    def http_status(self, response: FrameT) -> int:
        """The response's status in HTTP's terms, for the proxy and the access log."""
