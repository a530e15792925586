"""``mesh.http``: HTTP calls through the mesh in the application's own process, with an API a
``requests`` user knows (``get``, ``post(json=...)``, ``request(..., stream=True)``;
``status_code``, ``headers``, ``content``, ``json()``, ``iter_content()``).

The URL's authority picks the virtual host of the route config (``outbound``, or the one
``using(name)`` names), as a Host header does on a listener; the upstream protocol (HTTP/1.1 or
HTTP/2, TLS) is the cluster's. A call that the mesh could not get an answer for raises a
``MeshError`` carrying Envoy's response flags; an upstream's own error status is a response.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from greenmesh.client import LISTENER, ROUTE_CONFIG, InProcess
from greenmesh.streams.base import Headers, RequestHead
from greenmesh.streams.inprocess import CallState, InProcessStream

__all__ = ["LISTENER", "HTTPError", "HttpClient", "Response", "ResponseHeaders"]

Body = bytes | str | Iterable[bytes] | Mapping[str, Any] | None


class HTTPError(Exception):
    """``raise_for_status()``: the response's status is 4xx or 5xx."""

    def __init__(self, message: str, response: Response):
        super().__init__(message)
        self.response = response


class ResponseHeaders(Mapping[str, str]):
    """A response's headers by case-insensitive name; a repeated header's values joined with
    ", " (as ``requests`` does); ``get_all`` gives them apart."""

    __slots__ = ("_pairs", "_joined")

    def __init__(self, pairs: Headers):
        self._pairs = pairs
        joined: dict[str, str] = {}
        for name, value in pairs:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            joined[key] = f"{joined[key]}, {text}" if key in joined else text
        self._joined = joined

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, v in self._pairs if n.lower() == key]

    def __repr__(self) -> str:
        return f"ResponseHeaders({self._joined!r})"


class Response:
    """An upstream's (or a route's direct) response. With ``stream=True`` the body is read as
    it is taken (``iter_content``); close the response, or use it in a ``with``, if the body is
    not read to its end (that resets the upstream stream)."""

    def __init__(self, stream: InProcessStream, calls: InProcess, url: str, target: str):
        head = stream.head
        assert head is not None
        self.status_code = head.status
        self.reason = head.reason.decode("latin-1")
        self.headers = ResponseHeaders(head.headers)
        self.url = url
        self._stream = stream
        self._calls = calls
        self._target = target
        self._content: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def trailers(self) -> ResponseHeaders:
        """The response's trailers, once its body was read (gRPC's status is here)."""
        return ResponseHeaders(self._stream.response_trailers or [])

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body in pieces as they come, or re-cut to ``chunk_size`` bytes. Raises the
        call's MeshError if the response is cut short."""
        if self._content is not None:
            content = self._content
            step = chunk_size or len(content) or 1
            yield from (content[i:i + step] for i in range(0, len(content), step))
            return
        pieces = self._pieces()
        if chunk_size is None:
            yield from pieces
            return
        buf = bytearray()
        for piece in pieces:
            buf += piece
            while len(buf) >= chunk_size:
                yield bytes(buf[:chunk_size])
                del buf[:chunk_size]
        if buf:
            yield bytes(buf)

    def _pieces(self) -> Iterator[bytes]:
        stream = self._stream
        try:
            while (chunk := stream.next_chunk()) is not None:
                yield chunk
        except BaseException:
            stream.cancel()
            raise
        finally:  # a consumer that stops early (GeneratorExit) cancels too
            if stream.state is CallState.STREAMING:
                stream.cancel()
        self._content = b""
        self._calls.raise_failure(stream, self._target)

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self._pieces())
        return self._content

    @property
    def text(self) -> str:
        ctype = self.headers.get("content-type", "")
        charset = "utf-8"
        for param in ctype.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        return self.content.decode(charset, errors="replace")

    def json(self, **kwargs: Any) -> Any:
        return jsonlib.loads(self.content, **kwargs)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise HTTPError(f"{self.status_code} {self.reason} for {self.url}", self)

    def close(self) -> None:
        """Drops what is left of the body (its upstream stream is reset if it was unread)."""
        if self._content is None and self._stream.state is CallState.STREAMING:
            self._stream.cancel()
        self._content = self._content if self._content is not None else b""

    def __del__(self) -> None:
        # A streamed response dropped unread (requests' users rely on this too): its upstream
        # stream is reset now rather than at the stream idle timeout.
        stream = getattr(self, "_stream", None)
        if stream is not None and stream.state is CallState.STREAMING:
            stream.cancel()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


def _header_list(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Headers:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in items]


class HttpClient:
    """``mesh.http``. Every method takes ``headers`` (a mapping or pairs), ``params`` (added to
    the query), ``timeout`` (seconds: instead of the route's timeout, from the end of the
    request body to the whole response) and ``stream`` (the body read as it is taken)."""

    def __init__(self, calls: InProcess, route_config: str = ROUTE_CONFIG,
                 buffer_limit: int = 1 << 20):
        self._calls = calls
        self.route_config = route_config
        self._buffer_limit = buffer_limit

    def using(self, route_config: str) -> HttpClient:
        """The same client on another route config."""
        return HttpClient(self._calls, route_config, self._buffer_limit)

    def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                data: Body = None, json: Any = None,
                headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                timeout: float | None = None, stream: bool = False) -> Response:
        """``data``: bytes, text (UTF-8), a mapping (sent as a form) or an iterable of bytes
        (sent as it yields, chunked on HTTP/1.1); ``json``: a value sent as JSON."""
        verb = method.upper()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, not {timeout!r}")
        path = parts.path or "/"
        query = parts.query
        if params:
            query = f"{query}&{urlencode(params, doseq=True)}" if query else \
                urlencode(params, doseq=True)
        if query:
            path = f"{path}?{query}"
        fields = _header_list(headers)
        body: bytes | Iterable[bytes] | None
        ctype: bytes | None = None
        if json is not None:
            body, ctype = jsonlib.dumps(json).encode(), b"application/json"
        elif isinstance(data, str):
            body = data.encode()
        elif isinstance(data, Mapping):
            body, ctype = urlencode(data, doseq=True).encode(), \
                b"application/x-www-form-urlencoded"
        else:
            body = data
        if ctype is not None and not any(n == b"content-type" for n, _ in fields):
            fields.append((b"content-type", ctype))
        if isinstance(body, (bytes, bytearray)):
            fields = [(n, v) for n, v in fields if n != b"content-length"]
            if body or verb in ("POST", "PUT", "PATCH"):
                fields.append((b"content-length", b"%d" % len(body)))
        head = RequestHead(verb.encode("latin-1"), path.encode("latin-1"),
                           parts.netloc.rpartition("@")[2].encode("latin-1"),
                           parts.scheme.encode("latin-1"), fields)
        head.timeout = timeout
        call = InProcessStream(head, body, self._buffer_limit if stream else 0)
        target = f"{verb} {url}"
        self._calls.start(self.route_config, "http", call, target, background=stream)
        response = Response(call, self._calls, url, target)
        if not stream:
            response.content  # noqa: B018 - read it all now, as requests does
        return response

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> Response:
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> Response:
        return self.request("OPTIONS", url, **kwargs)

    def post(self, url: str, data: Body = None, json: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", url, data=data, json=json, **kwargs)

    def put(self, url: str, data: Body = None, **kwargs: Any) -> Response:
        return self.request("PUT", url, data=data, **kwargs)

    def patch(self, url: str, data: Body = None, **kwargs: Any) -> Response:
        return self.request("PATCH", url, data=data, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Response:
        return self.request("DELETE", url, **kwargs)
