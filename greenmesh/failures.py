"""Why a request failed, as types: Envoy's response flags and stream reset reasons.

They travel from where a failure is known (a pool, a codec, the proxy) to where it is answered
(each codec maps a local reply to its own wire answer once: an HTTP status and body, a bolt
status) and to the access log, so nothing downstream ever parses an error's text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ResponseFlag(enum.Enum):
    """Envoy's response flags (the access log's %RESPONSE_FLAGS%), by their short names."""

    NO_ROUTE_FOUND = "NR"
    NO_CLUSTER_FOUND = "NC"
    NO_HEALTHY_UPSTREAM = "UH"
    UPSTREAM_CONNECTION_FAILURE = "UF"
    UPSTREAM_CONNECTION_TERMINATION = "UC"
    UPSTREAM_OVERFLOW = "UO"
    UPSTREAM_REQUEST_TIMEOUT = "UT"
    UPSTREAM_PROTOCOL_ERROR = "UPE"
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"
    STREAM_IDLE_TIMEOUT = "SI"
    DURATION_TIMEOUT = "DT"  # the listener's max_stream_duration passed
    DELAY_INJECTED = "DI"
    FAULT_INJECTED = "FI"
    RATE_LIMITED = "RL"
    OVERLOAD_MANAGER = "OM"
    # greenmesh's own: a bug in greenmesh ended the request (logged with its traceback).
    INTERNAL_ERROR = "IE"


def render_flags(flags: list[ResponseFlag]) -> str:
    """Envoy's spelling: the short names joined by commas, ``-`` for none."""
    return ",".join(f.value for f in flags) if flags else "-"


class ResetReason(enum.Enum):
    """Envoy's stream reset reasons: why an upstream (or downstream) stream ended early."""

    CONNECTION_FAILURE = "connection failure"  # the connection could not be opened
    CONNECTION_TERMINATION = "connection termination"  # it closed or broke
    LOCAL_RESET = "local reset"
    OVERFLOW = "overflow"
    REMOTE_RESET = "remote reset"
    REMOTE_REFUSED_STREAM = "remote refused stream reset"  # HTTP/2 REFUSED_STREAM: not processed
    PROTOCOL_ERROR = "protocol error"  # the peer broke its protocol


@dataclass(slots=True)
class LocalReply:
    """An answer greenmesh gives itself: an HTTP status (for HTTP and the logs), the flags that
    say why, a body and extra headers. RPC codecs map the flags to their own statuses."""

    status: int
    flags: list[ResponseFlag] = field(default_factory=list)
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def flag(self) -> ResponseFlag | None:
        """The main reason (the first flag), or None for a plain answer (a direct response)."""
        return self.flags[0] if self.flags else None
