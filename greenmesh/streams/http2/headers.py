"""HTTP/2 header blocks: HPACK (the ``hpack`` library) with block caches, and the validation RFC
9113 section 8 asks of every field (sans-IO, used by the codec).

HPACK is most of what HTTP/2 costs a proxy (the issue's measurement: 74 of MOSN's 98 µs per
request). Traffic repeats itself: once a client's headers are in the dynamic table, it sends the
same block bytes for every request, and greenmesh encodes the same header lists upstream. So a
block decoded (or a list encoded) without changing the dynamic table is cached, keyed by the
table's generation: the next identical block costs a dict lookup, not a decode. A block that
changes the table (a literal with indexing, a size update) bumps the generation, which retires
every cached entry at once.

Some peers index every response field without ever referring to the dynamic table (nginx sends
``server`` and ``date`` as literals with incremental indexing in every response): such a block
decodes the same whatever the table holds, so it is cached apart, with the entries it adds, which
a cache hit adds to the table as the decoder would have.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from hpack import Decoder, Encoder, HPACKError, OversizedHeaderListError

Headers = list[tuple[bytes, bytes]]

# RFC 9113 section 8.2.2: these describe one hop and are malformed in HTTP/2.
CONNECTION_SPECIFIC: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                        b"transfer-encoding", b"upgrade"))
REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":authority", b":path"))
RESPONSE_PSEUDO: Final = frozenset((b":status",))
_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a lowercase token
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
_CACHE_LIMIT: Final = 4096  # entries per cache, before it starts again
_STATIC_ENTRIES: Final = 61  # RFC 7541 appendix A


def _integer(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 section 5.1) at ``i`` with a ``prefix``-bit prefix."""
    mask = (1 << prefix) - 1
    value = block[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        b = block[i]
        i += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _table_independent(block: bytes) -> list[bool] | None:
    """Whether each field of a (decoded, so well-formed) block is added to the table, if no
    field of it refers to the dynamic table and it updates no size; else None."""
    adds = []
    i, n = 0, len(block)
    while i < n:
        b = block[i]
        if b & 0x80:  # indexed
            index, i = _integer(block, i, 7)
            if index > _STATIC_ENTRIES:
                return None
            adds.append(False)
            continue
        if b & 0xE0 == 0x20:  # a table size update
            return None
        prefix = 6 if b & 0x40 else 4  # with incremental indexing; without or never indexed
        index, i = _integer(block, i, prefix)
        if index > _STATIC_ENTRIES:
            return None
        for _ in range(1 if index else 2):  # the value; first the name when it is literal
            length, i = _integer(block, i, 7)
            i += length
        adds.append(prefix == 6)
    return adds


class Malformed(Exception):
    """A header block that breaks HTTP/2's message rules: a stream error (PROTOCOL_ERROR) on
    its stream only."""


class CompressionError(Exception):
    """HPACK input that cannot be decoded: the connection's HPACK state is lost
    (COMPRESSION_ERROR), or a block bigger than greenmesh decodes (ENHANCE_YOUR_CALM)."""

    def __init__(self, message: str, too_big: bool = False):
        super().__init__(message)
        self.too_big = too_big


class _Table:
    """Tells whether the hpack table behind it changed since the last look: entries are
    added at the left, so a change moves the leftmost entry or the length."""

    __slots__ = ("entries", "generation", "_seen")

    def __init__(self, entries) -> None:
        self.entries = entries
        self.generation = 0
        self._seen: tuple[int, int] = (0, 0)

    def changed(self) -> bool:
        entries = self.entries
        now = (len(entries), id(entries[0]) if entries else 0)
        if now != self._seen:
            self._seen = now
            self.generation += 1
            return True
        return False


class HeaderCodec:
    """One connection's HPACK encoder and decoder, with caches and field validation."""

    __slots__ = ("encoder", "decoder", "_enc_table", "_dec_table", "_enc_cache", "_dec_cache",
                 "_independent", "_valid")

    def __init__(self, max_block: int) -> None:
        self.encoder = Encoder()
        self.decoder = Decoder()
        #: What HPACK decodes before giving up on the connection (a header bomb).
        self.decoder.max_header_list_size = max_block
        self._enc_table = _Table(self.encoder.header_table.dynamic_entries)
        self._dec_table = _Table(self.decoder.header_table.dynamic_entries)
        self._enc_cache: dict[tuple, bytes] = {}
        self._dec_cache: dict[bytes, Headers] = {}
        # Blocks that decode alike whatever the table holds: their fields, and those they add.
        self._independent: dict[bytes, tuple[Headers, tuple[tuple[bytes, bytes], ...]]] = {}
        self._valid: set[tuple[bytes, bytes]] = set()  # regular fields already checked

    def set_peer_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: our encoder's limit."""
        self.encoder.header_table_size = size
        self._enc_cache.clear()

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        key = tuple(headers)
        cache = self._enc_cache
        block = cache.get(key)
        if block is not None:
            return block
        resized = self.encoder.header_table.resized  # this block carries a size update
        block = self.encoder.encode(key)
        if self._enc_table.changed() or resized:
            cache.clear()  # entries of the old table state mean nothing now
        else:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[key] = block
        return block

    def decode(self, block: bytes) -> Headers:
        cache = self._dec_cache
        headers = cache.get(block)
        if headers is not None:
            return headers
        known = self._independent.get(block)
        if known is not None:
            headers, adds = known
            table = self.decoder.header_table
            for name, value in adds:  # what decoding it would have added
                table.add(name, value)
            if adds and self._dec_table.changed():
                cache.clear()
            return headers
        try:
            decoded = self.decoder.decode(block, raw=True)
        except OversizedHeaderListError as e:
            raise CompressionError(str(e), too_big=True) from None
        except (HPACKError, ValueError, IndexError) as err:
            raise CompressionError(f"HPACK: {err}") from None
        headers = [(n, v) for n, v in decoded]
        if self._dec_table.changed():
            cache.clear()
            added = _table_independent(block)
            if added is not None and len(added) == len(headers):
                if len(self._independent) >= _CACHE_LIMIT:
                    self._independent.clear()
                self._independent[block] = (headers, tuple(
                    field for field, a in zip(headers, added, strict=True) if a))
        else:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[block] = headers
        return headers

    def check_fields(self, headers: Headers, pseudo_allowed: frozenset[bytes],
                     trailers: bool = False) -> None:
        """RFC 9113 section 8.2-8.3 for any block: lowercase token names, values without
        NUL/CR/LF or surrounding whitespace, pseudo-headers known, once each and first, none in
        trailers, no connection-specific field, TE only "trailers"."""
        valid = self._valid
        seen_pseudo: set[bytes] = set()
        regular = False
        for field in headers:
            name = field[0]
            if name[:1] == b":":
                if regular or trailers:
                    raise Malformed("pseudo-header after a regular field, or in trailers")
                if name not in pseudo_allowed or name in seen_pseudo:
                    raise Malformed(f"pseudo-header {name!r} unknown or repeated")
                seen_pseudo.add(name)
                if _BAD_VALUE.search(field[1]):
                    raise Malformed(f"bad value for {name!r}")
                continue
            regular = True
            if field in valid:
                continue
            if not _NAME.fullmatch(name):
                raise Malformed(f"bad field name {name!r}")
            if _BAD_VALUE.search(field[1]):
                raise Malformed(f"bad value for {name!r}")
            if name in CONNECTION_SPECIFIC:
                raise Malformed(f"connection-specific field {name!r}")
            if name == b"te" and field[1] != b"trailers":
                raise Malformed("TE other than trailers")
            if len(valid) >= _CACHE_LIMIT:
                valid.clear()
            valid.add(field)


def request_fields(headers: Headers) -> tuple[dict[bytes, bytes], int]:
    """The pseudo-headers of a checked request block and its content-length (-1: none);
    raises Malformed when a required one is missing (RFC 9113 section 8.3.1)."""
    pseudo: dict[bytes, bytes] = {}
    length = -1
    for name, value in headers:
        if name[:1] == b":":
            pseudo[name] = value
        elif name == b"content-length":
            length = _content_length(value, length)
    method = pseudo.get(b":method")
    if not method:
        raise Malformed("no :method")
    if method == b"CONNECT":
        if b":authority" not in pseudo or b":scheme" in pseudo or b":path" in pseudo:
            raise Malformed("CONNECT with :scheme or :path, or without :authority")
    elif not pseudo.get(b":scheme") or not pseudo.get(b":path"):
        raise Malformed("no :scheme or an empty or missing :path")
    return pseudo, length


def response_fields(headers: Headers) -> tuple[int, int]:
    """The status of a checked response block and its content-length (-1: none)."""
    status = b""
    length = -1
    for name, value in headers:
        if name == b":status":
            status = value
        elif name == b"content-length":
            length = _content_length(value, length)
    if len(status) != 3 or not status.isdigit():
        raise Malformed("no valid :status")
    return int(status), length


def _content_length(value: bytes, previous: int) -> int:
    if not value.isdigit():
        raise Malformed("content-length is not a number")
    length = int(value)
    if previous not in (-1, length):
        raise Malformed("conflicting content-length fields")
    return length
