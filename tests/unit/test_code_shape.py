"""The code keeps the shape that makes it easy to read: short modules, short functions.

ruff checks branches, arguments and statements per function; this checks what it does not: that
no module grows past ~500 lines and no function past ~60, so the layout stays visible.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "reconciler"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_long():
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in modules()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_long():
    long = {}
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def layers_contract() -> list[str]:
    """The ``layers`` list of the import-linter layers contract in pyproject.toml."""
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    layers: list[str] = contract["layers"]
    return layers


def test_every_package_is_a_layer_of_the_import_contract():
    """A new sub-package must be placed in the layers contract, or it escapes the architecture."""
    packages = sorted(f"reconciler.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py"))
    layers = layers_contract()
    missing = [name for name in packages if name not in layers]
    assert packages and not missing, f"sub-packages missing from the layers contract: {missing}"
    modules = sorted(
        f"reconciler.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")
    )
    assert set(layers) == {*packages, *modules}, "a layer that names no package or top-level module"
