"""The Prometheus text exposition (format 0.0.4) of a Mesh's stats, named as Envoy's
/stats/prometheus names them: ``envoy_`` + the name with its scope's name taken out as a label
(Envoy's tag extraction), so dashboards built for Envoy read greenmesh.

    cluster.backend.upstream_rq_2xx      -> envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",
                                                                    envoy_cluster_name="backend"}
    http.ingress.downstream_rq_time      -> envoy_http_downstream_rq_time_bucket{le=...,
                                              envoy_http_conn_manager_prefix="ingress"}
    listener.ingress.downstream_cx_total -> envoy_listener_downstream_cx_total{
                                              envoy_listener_address="ingress"}
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from greenmesh.stats import BUCKETS, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# scope -> the label its second name segment becomes (Envoy's tag names).
_SCOPES = {"cluster": "envoy_cluster_name", "http": "envoy_http_conn_manager_prefix",
           "listener": "envoy_listener_address"}
_STATUS_CLASS = re.compile(r"^(.*_rq)_([1-5])xx$")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_:]")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def split(name: str, known: Iterable[str] = ()) -> tuple[str, dict[str, str]]:
    """A stat's Prometheus name and labels. ``known``: names of the scope's objects (cluster
    and listener names may hold dots: the longest known one that prefixes the rest wins)."""
    labels: dict[str, str] = {}
    scope, _, rest = name.partition(".")
    tag = _SCOPES.get(scope)
    if tag is not None and rest:
        owner = max((k for k in known if rest.startswith(k + ".")), key=len, default=None)
        if owner is None:
            owner, _, rest = rest.partition(".")
        else:
            rest = rest[len(owner) + 1:]
        labels[tag] = owner
        name = f"{scope}.{rest}"
    m = _STATUS_CLASS.match(name)
    if m is not None:
        name = m.group(1) + "_xx"
        labels["envoy_response_code_class"] = m.group(2)
    return "envoy_" + _UNSAFE.sub("_", name), labels


def _labels(labels: dict[str, str], extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def render(stats: Stats, known: Iterable[str] = ()) -> str:
    """Every counter, gauge and histogram, grouped by metric with one TYPE line each."""
    known = tuple(known)
    families: dict[str, tuple[str, list[str]]] = {}
    for name, value in sorted(stats.counters.items()):
        metric, labels = split(name, known)
        kind = "gauge" if name in stats.gauges else "counter"
        families.setdefault(metric, (kind, []))[1].append(f"{metric}{_labels(labels)} {value}")
    for name, h in sorted(stats.histograms.items()):
        metric, labels = split(name, known)
        lines = families.setdefault(metric, ("histogram", []))[1]
        for bound, count in zip((*BUCKETS, None), h.cumulative(), strict=True):
            le = 'le="' + ("+Inf" if bound is None else f"{bound:g}") + '"'
            lines.append(f"{metric}_bucket{_labels(labels, le)} {count}")
        lines.append(f"{metric}_sum{_labels(labels)} {h.sum!r}")
        lines.append(f"{metric}_count{_labels(labels)} {h.count}")
    out = []
    for metric, (kind, lines) in families.items():
        out.append(f"# TYPE {metric} {kind}\n")
        out.extend(line + "\n" for line in lines)
    return "".join(out)
