"""The filters bench/filters.py measures (loaded by import path, as a user's would be)."""

from __future__ import annotations

from greenmesh.filters import Filter, FilterContext, LocalReply


class Nothing(Filter):
    """Overrides no hook: what the chain costs with nothing to do."""


class AddHeader(Filter):
    """One request header, added before routing: the smallest useful Python filter."""

    def before_route(self, ctx: FilterContext) -> LocalReply | None:
        ctx.request.set(b"x-filtered", b"1")
        return None
