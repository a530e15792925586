"""Envoy's fault injection filter (``envoy.filters.http.fault``): delay and/or abort a share of
requests, optionally only those with given headers or bound for one cluster, the share and the
values optionally taken from ``x-envoy-fault-*`` request headers. Runs after routing, so a route
can override or disable it. For RPC protocols the abort status is mapped by the codec (bolt: 503
-> server busy, 504 -> timeout...)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent

from greenmesh import model
from greenmesh.config.filters import fractional_percent
from greenmesh.config.reader import Reader, count, duration, join, status, text
from greenmesh.config.routes import header_matcher
from greenmesh.failures import LocalReply, ResponseFlag
from greenmesh.filters.api import Filter, FilterContext
from greenmesh.router import HeaderCheck

DELAY_HEADER = b"x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = b"x-envoy-fault-delay-request-percentage"
ABORT_HEADER = b"x-envoy-fault-abort-request"
ABORT_PERCENT_HEADER = b"x-envoy-fault-abort-request-percentage"


@dataclass(frozen=True, slots=True)
class FaultConfig:
    delay: float | None = None  # seconds; None: no fixed delay
    header_delay: bool = False  # the delay comes from x-envoy-fault-delay-request (ms)
    delay_fraction: float = 0.0
    abort_status: int | None = None
    header_abort: bool = False  # the status comes from x-envoy-fault-abort-request
    abort_fraction: float = 0.0
    headers: tuple[model.HeaderMatcher, ...] = ()
    upstream_cluster: str | None = None
    max_active_faults: int | None = None
    # The denominators the header percentages are read against (Envoy: the config's).
    delay_denominator: int = 100
    abort_denominator: int = 100


_FIELDS = {"delay": ("delay", "delay_fraction", "delay_denominator"),
           "abort": ("abort_status", "abort_fraction", "abort_denominator")}


def _fault_kind(r: Reader, obj: dict, path: str, key: str, fixed: tuple[str, Any],
                header: str, values: dict[str, Any]) -> None:
    """A FaultDelay or FaultAbort: a fixed value or one from a header, and the share."""
    if obj.get(key) is None:
        return
    p = join(path, key)
    o = r.mapping(obj[key], p, (fixed[0], header, "percentage"), refuse=("grpc_status",))
    if o is None:
        return
    if (o.get(fixed[0]) is None) == (o.get(header) is None):
        r.error(p, f"expected one of {fixed[0]}, {header}")
    value, fraction, denominator = _FIELDS[key]
    values[value] = r.field(o, p, fixed[0], fixed[1], None)
    values[header] = o.get(header) is not None
    values[fraction] = fractional_percent(r, o, p, "percentage")
    values[denominator] = _denominator(o, "percentage")


def _denominator(obj: dict, key: str) -> int:
    fp = obj.get(key)
    den = fp.get("denominator", "HUNDRED") if isinstance(fp, dict) else "HUNDRED"
    return {"TEN_THOUSAND": 10_000, "MILLION": 1_000_000}.get(den, 100)


class FaultFilter(Filter):
    type_names: ClassVar = ("envoy.filters.http.fault",
                            "envoy.extensions.filters.http.fault.v3.HTTPFault")

    __slots__ = ("_checks", "_active")

    def __init__(self, config: FaultConfig):
        super().__init__(config)
        self._checks = tuple(HeaderCheck(h) for h in config.headers)
        self._active = 0

    @classmethod
    def parse(cls, r: Reader, v: Any, path: str) -> FaultConfig | None:
        obj = r.mapping(v, path, ("@type", "delay", "abort", "headers", "upstream_cluster",
                                  "max_active_faults"),
                        refuse=("response_rate_limit", "downstream_nodes"))
        if obj is None:
            return None
        mark = r.mark()
        values: dict[str, Any] = {}
        _fault_kind(r, obj, path, "delay", ("fixed_delay", duration), "header_delay", values)
        _fault_kind(r, obj, path, "abort", ("http_status", status), "header_abort", values)
        headers = [header_matcher(r, h, p) for p, h in r.items(obj, path, "headers")]
        cluster = r.field(obj, path, "upstream_cluster", text, None)
        active = r.field(obj, path, "max_active_faults", count, None)
        if r.failed_since(mark):
            return None
        return FaultConfig(headers=tuple(h for h in headers if h is not None),
                           upstream_cluster=cluster or None, max_active_faults=active, **values)

    def after_route(self, ctx: FilterContext) -> LocalReply | None:
        cfg: FaultConfig = self.config
        if cfg.upstream_cluster is not None and ctx.cluster != cfg.upstream_cluster:
            return None
        head = ctx.request
        for check in self._checks:
            if not check.matches(head):
                return None
        delay = self._delay(cfg, head)
        abort = self._abort(cfg, head)
        if delay is None and abort is None:
            return None
        if cfg.max_active_faults is not None and self._active >= cfg.max_active_faults:
            ctx.count("fault.faults_overflow")
            return None
        self._active += 1
        try:
            if delay is not None:
                ctx.count("fault.delays_injected")
                ctx.flags.append(ResponseFlag.DELAY_INJECTED)
                gevent.sleep(delay)
            if abort is not None:
                ctx.count("fault.aborts_injected")
                return ctx.reply(abort, b"fault filter abort", flag=ResponseFlag.FAULT_INJECTED)
        finally:
            self._active -= 1
        return None

    @staticmethod
    def _chosen(fraction: float, head: Any, header: bytes, denominator: int) -> bool:
        value = head.get(header)
        if value is not None and value.isdigit():  # at most the configured share
            fraction = min(fraction, int(value) / denominator)
        return fraction > 0 and random.random() < fraction

    def _delay(self, cfg: FaultConfig, head: Any) -> float | None:
        if cfg.header_delay:
            value = head.get(DELAY_HEADER)
            if value is None or not value.isdigit():
                return None
            seconds: float | None = int(value) / 1000
        else:
            seconds = cfg.delay
        chosen = self._chosen(cfg.delay_fraction, head, DELAY_PERCENT_HEADER,
                              cfg.delay_denominator)
        return seconds if seconds is not None and chosen else None

    def _abort(self, cfg: FaultConfig, head: Any) -> int | None:
        if cfg.header_abort:
            value = head.get(ABORT_HEADER)
            if value is None or not value.isdigit() or not 200 <= int(value) < 600:
                return None
            code: int | None = int(value)
        else:
            code = cfg.abort_status
        chosen = self._chosen(cfg.abort_fraction, head, ABORT_PERCENT_HEADER,
                              cfg.abort_denominator)
        return code if code is not None and chosen else None
