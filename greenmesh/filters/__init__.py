"""Stream filters: Python classes between the codec and the router (Envoy's http_filters,
MOSN's stream filters), run the same way for every protocol.

Write one by subclassing ``Filter``; register it as an entry point in the ``greenmesh.filters``
group (or name it by import path with the ``greenmesh.filters.python`` type) and list it in a
listener's ``http_filters``. ``api`` holds what a filter sees, ``chain`` runs them, ``registry``
finds their types; ``fault``, ``local_ratelimit``, ``header_to_metadata`` and ``python`` ship.
"""

from greenmesh.filters.api import Filter, FilterContext, LocalReply, ResetStream, ResponseFlag

__all__ = ["Filter", "FilterContext", "LocalReply", "ResetStream", "ResponseFlag"]
