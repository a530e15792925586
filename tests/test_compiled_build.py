"""The suite runs twice: on the Python source, then on the compiled build (scripts/test.sh sets
GREENMESH_COMPILED=1 for that run, from build/compiled). These tests make sure each run tests
what it says, and catch the one Python form mypyc compiles wrongly before it can bite."""

from __future__ import annotations

import ast
import importlib
import os

from tests.harness import ROOT


def compiled_modules() -> list[str]:
    """setup.py's COMPILED, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no COMPILED list")


def test_the_modules_under_test_are_the_build_asked_for():
    compiled = os.environ.get("GREENMESH_COMPILED") == "1"
    for path in compiled_modules():
        name = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(".so") == compiled, (name, module.__file__)


def test_no_except_name_is_bound_to_two_types_in_one_function():
    """mypyc gives a name one type per function: ``except A as e`` then ``except B as e``
    (B not an A) raises TypeError in the compiled build when B is caught."""
    clashes = []
    for path in compiled_modules():
        tree = ast.parse((ROOT / path).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            bound: dict[str, str] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                    caught = ast.unparse(node.type)
                    if bound.setdefault(node.name, caught) != caught:
                        clashes.append(f"{path}:{node.lineno} {fn.name}: {node.name} is "
                                       f"{bound[node.name]} and {caught}")
    assert not clashes, clashes
