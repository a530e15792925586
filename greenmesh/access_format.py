"""Envoy's access-log formats: a format string of command operators
(``[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ...``) or a
JSON object whose values are format strings, compiled once (an unknown operator is a config
error) into a function of one request's record."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, Final

from greenmesh.streams.base import RequestHead

# Envoy's default text format, without %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% (greenmesh does
# not add that header) and with greenmesh's %UPSTREAM_CLUSTER% instead.
DEFAULT_FORMAT: Final = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
    '"%UPSTREAM_HOST%" %UPSTREAM_CLUSTER%')
# What greenmesh calls each protocol, in Envoy's words where Envoy has them.
PROTOCOL_NAMES: Final = {"http1": "HTTP/1.1", "http2": "HTTP/2", "bolt": "bolt"}
_OPERATOR = re.compile(r"%([A-Z_0-9]+)(?:\(([^)]*)\))?(?::(\d+))?%")


class Record:
    """One finished request, as the access log sees it."""

    __slots__ = ("listener", "protocol", "request", "status", "flags", "bytes_in", "bytes_out",
                 "duration_us", "cluster", "upstream", "details", "start")

    def __init__(self, listener: str, protocol: str, request: RequestHead, status: int,
                 flags: str, bytes_in: int, bytes_out: int, duration_us: int,
                 cluster: str | None, upstream: str | None, details: str):
        self.listener = listener
        self.protocol = protocol
        self.request = request
        self.status = status
        self.flags = flags
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.duration_us = duration_us
        self.cluster = cluster
        self.upstream = upstream
        self.details = details
        self.start = time.time() - duration_us / 1e6


def header(request: RequestHead, name: bytes) -> str | None:
    """A request header's value (the first), or a pseudo-header's: :method, :path..."""
    if name.startswith(b":"):
        value = {b":method": request.method, b":path": request.path,
                 b":authority": request.authority, b":scheme": request.scheme}.get(name)
        return value.decode("latin-1") if value else None
    for n, v in request.headers:
        if n == name:
            return v.decode("latin-1")
    return None


def _start_time(fmt: str | None) -> Callable[[Record], Any]:
    def render(r: Record) -> str:
        if fmt:
            return time.strftime(fmt, time.gmtime(r.start))
        millis = int(r.start * 1000) % 1000
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.start)) + f".{millis:03d}Z"
    return render


def _req(arg: str | None) -> Callable[[Record], Any]:
    if not arg:
        raise ValueError("%REQ(...)% needs a header name")
    first, _, alternative = arg.lower().partition("?")
    names = [first.encode()] + ([alternative.encode()] if alternative else [])

    def render(r: Record) -> str | None:
        for name in names:
            value = header(r.request, name)
            if value is not None:
                return value
        return None
    return render


def _fixed(get: Callable[[Record], Any]) -> Callable[[str | None], Callable[[Record], Any]]:
    def make(arg: str | None) -> Callable[[Record], Any]:
        if arg is not None:
            raise ValueError("takes no argument")
        return get
    return make


_OPERATORS: Final[dict[str, Callable[[str | None], Callable[[Record], Any]]]] = {
    "START_TIME": _start_time,
    "REQ": _req,
    "PROTOCOL": _fixed(lambda r: PROTOCOL_NAMES.get(r.protocol, r.protocol)),
    "RESPONSE_CODE": _fixed(lambda r: r.status),
    "RESPONSE_FLAGS": _fixed(lambda r: r.flags),
    "RESPONSE_CODE_DETAILS": _fixed(lambda r: r.details or None),
    "BYTES_RECEIVED": _fixed(lambda r: r.bytes_in),
    "BYTES_SENT": _fixed(lambda r: r.bytes_out),
    "DURATION": _fixed(lambda r: r.duration_us // 1000),
    "UPSTREAM_HOST": _fixed(lambda r: r.upstream),
    "UPSTREAM_CLUSTER": _fixed(lambda r: r.cluster),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _fixed(lambda r: r.request.peer.decode()
                                                     if r.request.peer else None),
    "LISTENER_NAME": _fixed(lambda r: r.listener),  # greenmesh's: the listener's name
}


def _parts(text: str) -> list[str | tuple[Callable[[Record], Any], int | None]]:
    """Literal text and (operator, max length) pieces; ValueError naming what is wrong."""
    parts: list[str | tuple[Callable[[Record], Any], int | None]] = []
    at = 0
    for m in _OPERATOR.finditer(text):
        if m.start() > at:
            parts.append(text[at:m.start()])
        name, arg, limit = m.group(1), m.group(2), m.group(3)
        make = _OPERATORS.get(name)
        if make is None:
            raise ValueError(f"%{name}% is not a command operator greenmesh knows (it knows "
                             f"{', '.join(sorted(_OPERATORS))})")
        try:
            parts.append((make(arg), int(limit) if limit else None))
        except ValueError as e:
            raise ValueError(f"%{name}%: {e}") from None
        at = m.end()
    if at < len(text):
        parts.append(text[at:])
    return parts


def _text(value: Any, limit: int | None) -> str:
    out = "-" if value is None or value == "" else str(value)
    return out[:limit] if limit else out


def compile_text(text: str) -> Callable[[Record], str]:
    """A format string as a function of a record (a missing value is ``-``, as Envoy's)."""
    parts = _parts(text)

    def render(r: Record) -> str:
        return "".join(p if isinstance(p, str) else _text(p[0](r), p[1]) for p in parts)
    return render


def _typed(op: Callable[[Record], Any], limit: int | None) -> Callable[[Record], Any]:
    def render(r: Record) -> Any:
        value = op(r)
        return value[:limit] if limit and isinstance(value, str) else value
    return render


def compile_json(fields: dict[str, str]) -> Callable[[Record], str]:
    """Envoy's json_format: each value a format string; a value that is one operator alone
    keeps its type (a number stays a number, a missing value is null)."""
    compiled: list[tuple[str, Callable[[Record], Any]]] = []
    for key, text in fields.items():
        if not isinstance(text, str):
            raise ValueError(f"{key}: expected a format string")
        try:
            parts = _parts(text)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        if len(parts) == 1 and not isinstance(parts[0], str):
            compiled.append((key, _typed(*parts[0])))
        else:
            compiled.append((key, compile_text(text)))

    def render(r: Record) -> str:
        return json.dumps({key: get(r) for key, get in compiled}, separators=(", ", ": "))
    return render
