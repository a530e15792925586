"""greenmesh: a service-mesh data plane on gevent. Importing it patches and starts nothing."""

__version__ = "0.1.0"
