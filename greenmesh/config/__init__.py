"""Config: the YAML file and the control plane's resources, through one converter into the
frozen model.

``reader`` walks a tree with key paths; ``routes``, ``clusters``, ``listeners`` and ``tls`` convert
Envoy's v3 shapes (as Envoy's YAML/JSON form, which is also what a decoded xDS resource becomes)
plus greenmesh's shorter spellings; ``bootstrap`` reads the file's top level and checks the
cross-references. Every default and every check exists once, in these modules or the model.
"""

from greenmesh.config.bootstrap import load_dict, load_file, load_text
from greenmesh.config.reader import ConfigError

__all__ = ["ConfigError", "load_dict", "load_file", "load_text"]
