"""The package's architecture rules (docs/architecture.md), checked statically on the source:

* the layers import downwards only (``distill.models`` never imports ``distill.train``, ...);
* imports sit at module top, except optional heavy packages that a plain run must not need;
* no module exceeds ~500 lines unless its docstring says why;
* every ``distill.bin`` module is argument parsing plus one call (no class definitions, few lines).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "distill"

#: Bottom to top. A module may import its own layer and any layer listed before it.
LAYERS = [
    {"config", "config_yaml", "log", "safe_load"},
    {"data", "graph", "scoring"},
    {"losses"},
    {"models"},
    {"decode"},
    {"train"},
    {"bench"},
    {"bin"},
]
#: Packages that are optional or costly enough to be imported only where they are used.
LAZY_OK = {
    "onnx",
    "onnxruntime",
    "transformers",
    "matplotlib",
    "tensorboard",
    "torch.utils.tensorboard",
    "sherpa_onnx",
    "distill.bench.sampler",
    "resource",
}
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(name: str) -> int:
    """Layer index of ``distill.<part>...`` (``distill`` itself: the bottom)."""
    parts = name.split(".")
    if len(parts) < 2:
        return 0
    for i, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return i
    raise AssertionError(f"module {name} is in no layer: add its package to LAYERS and docs/architecture.md")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(tree: ast.Module, mod: str, is_pkg: bool) -> list[tuple[str, ast.AST]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node))
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_point_down_and_sit_at_top(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mod = _module_name(path)
    mine = _layer(mod)
    top_level = {id(n) for n in tree.body}
    for stmt in tree.body:  # imports guarded at module level (try/except ImportError, if TYPE_CHECKING)
        if isinstance(stmt, (ast.Try, ast.If)):
            top_level |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for name, node in _imports(tree, mod, path.name == "__init__.py"):
        if name.startswith("distill"):
            assert _layer(name) <= mine, (
                f"{mod} (layer {mine}) imports {name} (layer {_layer(name)}): "
                "a lower layer must not import a higher one"
            )
        if id(node) not in top_level:
            assert name in LAZY_OK or name.split(".")[0] in LAZY_OK, (
                f"{mod}:{node.lineno} imports {name} inside a function; move it to the module top "
                "(only optional heavy packages may be imported lazily)"
            )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_modules_are_short_or_say_why(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    n = text.count("\n")
    if n > MAX_LINES:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "longer than" in doc or "lines because" in doc, (
            f"{path.name} has {n} lines: split it along its seams, or say at its top why it is longer than "
            f"{MAX_LINES} lines"
        )


@pytest.mark.parametrize("path", sorted((ROOT / "bin").glob("*.py")), ids=lambda p: p.name)
def test_bin_modules_parse_and_call(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert not classes, f"{path.name} defines {classes}: schemas and logic belong in the package"
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} - {"main", "parse_args", "build_parser"}
    assert not funcs, f"{path.name} defines {sorted(funcs)}: a bin module parses arguments and calls the package"
    code_lines = sum(
        1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.strip().startswith("#")
    )
    assert code_lines <= 150, f"{path.name}: {code_lines} lines; a bin module parses arguments and calls"
