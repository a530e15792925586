"""Request mirroring (Envoy's request_mirror_policies): fire-and-forget copies of a request to
another cluster, with ``-shadow`` added to the authority; their answers are read and dropped, so a
slow or failing shadow never touches the real request."""

from __future__ import annotations

from greenmesh.stats import Stats
from greenmesh.streams.base import Headers, RequestHead, StreamError
from greenmesh.upstream.cluster import ClusterSnapshot


def send_mirror(cluster: ClusterSnapshot | None, stats: Stats, name: str, head: RequestHead,
                body: list[bytes], trailers: Headers | None, timeout: float | None) -> None:
    """A copy of the request to the cluster; its answer is read and dropped."""
    host = cluster.pick() if cluster is not None else None
    key = f"cluster.{name}.upstream_rq_mirror"
    if host is None:
        stats.inc(key + "_failed")
        return
    shadow = RequestHead(head.method, head.path, head.authority + b"-shadow", head.scheme,
                         list(head.headers))
    try:
        cs = host.pool.new_stream(timeout)
    except StreamError:
        stats.inc(key + "_failed")
        return
    try:
        cs.send_headers(shadow, end_stream=not body and not trailers)
        if body or trailers:
            for chunk in body[:-1]:
                cs.send_data(chunk, end_stream=False)
            if trailers:
                if body:
                    cs.send_data(body[-1], end_stream=False)
                cs.send_trailers(trailers)
            else:
                cs.send_data(body[-1], end_stream=True)
        resp = cs.read_headers(timeout)
        while resp.status < 200:
            resp = cs.read_headers(timeout)
        while cs.read_body(timeout) is not None:
            pass
        stats.inc(key)
    except StreamError:
        stats.inc(key + "_failed")
        cs.reset("mirror failed")
    finally:
        cs.finish()
