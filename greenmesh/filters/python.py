"""The ``greenmesh.filters.python`` filter type: a user's Filter subclass named by import path
(``class: package.module:ClassName``) with its own ``config``. Imported and validated when the
config is loaded (``--validate`` included), so a typo fails before any traffic."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from greenmesh.config.reader import Reader, join, string
from greenmesh.filters.api import Filter


class PythonFilter(Filter):
    type_names: ClassVar = ("greenmesh.filters.python",)

    @classmethod
    def parse(cls, r: Reader, v: Any, path: str) -> tuple[type[Filter], dict] | None:
        obj = r.mapping(v, path, ("@type", "class", "config"))
        if obj is None:
            return None
        target = r.field(obj, path, "class", string)
        if target is None:
            return None
        where = join(path, "class")
        module, _, name = target.partition(":")
        if not name:
            r.error(where, "expected package.module:ClassName")
            return None
        try:
            user = getattr(importlib.import_module(module), name)
        except Exception as e:  # the user's module: whatever it raises is the answer
            r.error(where, f"cannot import {target}: {type(e).__name__}: {e}")
            return None
        if not (isinstance(user, type) and issubclass(user, Filter)):
            r.error(where, f"{target} is not a greenmesh.filters.Filter subclass")
            return None
        config = obj.get("config") or {}
        if not isinstance(config, dict):
            r.error(join(path, "config"), "expected a mapping")
            return None
        try:
            user.validate(config)
        except (ValueError, TypeError) as e:
            r.error(join(path, "config"), str(e))
            return None
        return user, config

    @classmethod
    def create(cls, config: tuple[type[Filter], dict]) -> Filter:
        user, settings = config
        return user.create(settings)
