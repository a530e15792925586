"""Filters the tests load by import path (``greenmesh.filters.python``): each shows one thing a
user filter can do."""

from __future__ import annotations

import http.client

from greenmesh.filters import Filter, FilterContext, LocalReply, ResetStream


class Phases(Filter):
    """Records what it saw at each phase and hands it back on the response (and to the
    upstream as a request header)."""

    def before_route(self, ctx: FilterContext) -> LocalReply | None:
        ctx.state["seen"] = [f"before_route:{ctx.route is None}"]
        ctx.request.set(b"x-from-filter", self.config.get("tag", "on").encode())
        return None

    def after_route(self, ctx: FilterContext) -> LocalReply | None:
        ctx.state["seen"].append(f"after_route:{ctx.route.name if ctx.route else '-'}:"
                                 f"{ctx.cluster}")
        return None

    def after_host(self, ctx: FilterContext) -> LocalReply | None:
        ctx.state["seen"].append("after_host:" + ("yes" if ctx.host else "no"))
        return None

    def response_headers(self, ctx: FilterContext, head) -> LocalReply | None:
        head.set(b"x-phases", ",".join(ctx.state.get("seen", ["local"])).encode())
        return None


class Deny(Filter):
    """Answers 403 itself when the request carries ``x-deny``."""

    def before_route(self, ctx: FilterContext) -> LocalReply | None:
        if ctx.request.get(b"x-deny") is not None:
            return ctx.reply(403, "denied by filter\n", [(b"x-denied-by", b"Deny")])
        return None


class Boom(Filter):
    """Raises when the request carries ``x-boom``; resets the stream on ``x-reset``."""

    def after_route(self, ctx: FilterContext) -> LocalReply | None:
        if ctx.request.get(b"x-boom") is not None:
            raise RuntimeError("boom from a user filter")
        if ctx.request.get(b"x-reset") is not None:
            raise ResetStream("asked to")
        return None


class Upper(Filter):
    """Upper-cases the request body on its way up and the response body on its way back."""

    wants_request_body = True
    wants_response_body = True

    def before_route(self, ctx: FilterContext) -> LocalReply | None:
        return None

    def request_data(self, ctx: FilterContext, chunk: bytes) -> bytes:
        return chunk.upper()

    def response_data(self, ctx: FilterContext, chunk: bytes) -> bytes:
        ctx.state["out"] = ctx.state.get("out", 0) + len(chunk)
        return chunk.upper()


class AskService(Filter):
    """Blocks on a call to another service (the test upstream) before letting the request
    through: the call's answer decides, as a quota or session service would."""

    @classmethod
    def validate(cls, config: dict) -> None:
        if not isinstance(config.get("port"), int):
            raise ValueError("port: expected the service's port")

    def after_route(self, ctx: FilterContext) -> LocalReply | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.config["port"], timeout=5)
        try:
            conn.request("GET", "/status/" + (ctx.request.get(b"x-quota") or b"200").decode())
            status = conn.getresponse().status
        finally:
            conn.close()
        if status != 200:
            return ctx.reply(429, "quota service said no\n")
        ctx.set_metadata("quota", "status", status)
        return None
