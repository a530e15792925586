"""xDS: the ADS client (``client``), decoding resources into Envoy's JSON form for the config
converters (``resources``), and the EDS fast path (``fast``)."""
