"""Envoy's local rate limit filter (``envoy.filters.http.local_ratelimit``): a token bucket per
listener, and one per route or virtual host that gives its own config; a request that finds it
empty gets 429 with ``x-envoy-ratelimited`` (bolt: server busy). As in Envoy,
``filter_enabled`` and ``filter_enforced`` default to 0%: say 100% to limit anything."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from greenmesh.config.filters import fractional_percent
from greenmesh.config.reader import Reader, duration, join, positive, status, string
from greenmesh.config.routes import header_ops
from greenmesh.failures import LocalReply, ResponseFlag
from greenmesh.filters.api import Filter, FilterContext

_RATELIMITED = (b"x-envoy-ratelimited", b"true")


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    stat_prefix: str
    max_tokens: int | None = None  # None: no bucket at this level
    tokens_per_fill: int = 1
    fill_interval: float = 1.0
    enabled: float = 0.0
    enforced: float = 0.0
    status: int = 429
    response_headers: tuple[tuple[bytes, bytes], ...] = ()


class LocalRateLimit(Filter):
    type_names: ClassVar = ("envoy.filters.http.local_ratelimit",
                            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit")

    def __init__(self, config: RateLimitConfig):
        super().__init__(config)
        self._tokens = float(config.max_tokens or 0)
        self._filled_at = time.monotonic()
        p = f"{config.stat_prefix}.http_local_rate_limit."
        self._names = (p + "enabled", p + "enforced", p + "rate_limited", p + "ok")

    @classmethod
    def parse(cls, r: Reader, v: Any, path: str) -> RateLimitConfig | None:
        obj = r.mapping(v, path, ("@type", "stat_prefix", "status", "token_bucket",
                                  "filter_enabled", "filter_enforced",
                                  "response_headers_to_add"),
                        refuse=("descriptors", "local_rate_limit_per_downstream_connection",
                                "rate_limits"))
        if obj is None:
            return None
        mark = r.mark()
        values: dict[str, Any] = {"stat_prefix": r.field(obj, path, "stat_prefix", string)}
        if obj.get("status") is not None:
            sp = join(path, "status")
            so = r.mapping(obj["status"], sp, ("code",))
            if so is not None:
                values["status"] = r.field(so, sp, "code", status)
        if obj.get("token_bucket") is not None:
            bp = join(path, "token_bucket")
            b = r.mapping(obj["token_bucket"], bp, ("max_tokens", "tokens_per_fill",
                                                    "fill_interval"))
            if b is not None:
                values["max_tokens"] = r.field(b, bp, "max_tokens", positive)
                values["tokens_per_fill"] = r.field(b, bp, "tokens_per_fill", positive, 1)
                interval = r.field(b, bp, "fill_interval", duration)
                if interval is not None and interval < 0.05:
                    r.error(join(bp, "fill_interval"), "must be at least 50ms (as Envoy)")
                values["fill_interval"] = interval
        for key, name in (("filter_enabled", "enabled"), ("filter_enforced", "enforced")):
            if obj.get(key) is not None:
                kp = join(path, key)
                k = r.mapping(obj[key], kp, ("default_value", "runtime_key"))
                if k is not None:
                    values[name] = fractional_percent(r, k, kp, "default_value")
        ops = header_ops(r, {"response_headers_to_add": obj.get("response_headers_to_add")},
                         path)
        if r.failed_since(mark) or ops is None:
            return None
        values["response_headers"] = tuple((o.key.lower().encode(), o.value.encode())
                                           for o in ops.response_add)
        return RateLimitConfig(**values)

    def _take(self, cfg: RateLimitConfig) -> bool:
        now = time.monotonic()
        fills = int((now - self._filled_at) / cfg.fill_interval)
        if fills:
            self._filled_at += fills * cfg.fill_interval
            self._tokens = min(float(cfg.max_tokens or 0),
                               self._tokens + fills * cfg.tokens_per_fill)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def after_route(self, ctx: FilterContext) -> LocalReply | None:
        cfg: RateLimitConfig = self.config
        if cfg.max_tokens is None or not _share(cfg.enabled):
            return None
        stats = ctx.stats
        enabled, enforced, limited, ok = self._names
        stats.inc(enabled)
        if self._take(cfg):
            stats.inc(ok)
            return None
        stats.inc(limited)
        if not _share(cfg.enforced):
            return None
        stats.inc(enforced)
        return ctx.reply(cfg.status, b"local_rate_limited",
                         [_RATELIMITED, *cfg.response_headers], ResponseFlag.RATE_LIMITED)


def _share(fraction: float) -> bool:
    if fraction >= 1.0:
        return True
    return fraction > 0 and random.random() < fraction
