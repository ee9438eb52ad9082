"""Reading configuration YAML files: the safe loader with the number spellings of YAML 1.2, the
duplicate-key check, and ``base:`` inheritance with the file that set each value (provenance).

:mod:`distill.config` validates the merged mapping against a step's schema; this module knows nothing of
schemas. The rules are described in :mod:`distill.config`'s docstring.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BASE_KEY",
    "ConfigError",
    "config_files",
    "drop",
    "leaves",
    "load_yaml",
    "merge",
    "read_chain",
    "read_config",
]

BASE_KEY = "base"  # top-level key naming the file(s) a config inherits from


class ConfigError(ValueError):
    """A configuration value is unknown, missing or of the wrong type; the message names key and file."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading the float spellings YAML 1.1 leaves as strings (``1e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$"
    ),
    list("-+0123456789."),
)


def _check_duplicates(node: yaml.Node, path: str, where: str, seen: set[int]) -> None:
    """:class:`ConfigError` for a key given twice in one mapping (YAML would keep the second silently)."""
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge" or not isinstance(k, yaml.ScalarNode):
                _check_duplicates(v, path, where, seen)
                continue
            sub = f"{path}.{k.value}" if path else str(k.value)
            line = k.start_mark.line + 1
            if (k.tag, k.value) in first:
                raise ConfigError(
                    f"{where}: duplicate key '{sub}' (lines {first[k.tag, k.value]} and {line}): "
                    "the second would silently replace the first; keep one"
                )
            first[k.tag, k.value] = line
            _check_duplicates(v, sub, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", where, seen)


def load_yaml(text: str, where: str, path: str = "") -> Any:
    """Parse configuration YAML (safe; the number spellings and the duplicate-key check of the module
    docstring). ``where`` names the text in errors, ``path`` is the key it sits under (overrides)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, path, where, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def leaves(data: dict, source: str, prefix: str = "") -> dict[str, str]:
    """``{dotted key: source}`` for every leaf of ``data`` (a value that is not a non-empty mapping)."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(leaves(v, source, key + "."))
        else:
            out[key] = source
    return out


def drop(prov: dict[str, str], key: str) -> None:
    """Forget where ``key`` and everything under it came from (it is being replaced)."""
    for k in [k for k in prov if k == key or k.startswith(key + ".")]:
        del prov[k]


def merge(dst: dict, prov: dict[str, str], src: dict, src_prov: dict[str, str], prefix: str = "") -> None:
    """Merge ``src`` into ``dst`` in place: mappings key by key, anything else replaced; ``prov`` follows."""
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            if v:
                prov.pop(key, None)  # an empty mapping there before is a section now
            merge(dst[k], prov, v, src_prov, key + ".")
        else:
            dst[k] = copy.deepcopy(v)
            drop(prov, key)
            prov.update({s: f for s, f in src_prov.items() if s == key or s.startswith(key + ".")})


def _display(path: str) -> str:
    """``path`` without ``dir/..`` detours, unless that names another file (a symbolic link was crossed)."""
    norm = os.path.normpath(path)
    same = norm == path or (os.path.exists(norm) and os.path.exists(path) and os.path.samefile(norm, path))
    return norm if same else path


def _read_file(path: str, where: str) -> dict:
    """One configuration file as a mapping (the YAML rules of the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        loaded = load_yaml(p.read_text(encoding="utf-8"), where)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(loaded, (dict, type(None))):
        raise ConfigError(f"{where}: the top level must be a mapping of keys to values")
    return loaded or {}


def _base_paths(value: Any, path: str, where: str) -> list[str]:
    """The files ``base:`` names (relative to ``path``'s directory), each checked to exist."""
    if value is None:
        return []
    out = []
    for b in value if isinstance(value, list) else [value]:
        if not isinstance(b, str) or not b:
            raise ConfigError(f"{where}: key '{BASE_KEY}': expected a file name or a list of them, got {value!r}")
        p = _display(os.path.join(os.path.dirname(path), b))
        if not os.path.isfile(p):
            raise ConfigError(f"{where}: base '{b}' does not exist (looked for '{os.path.abspath(p)}')")
        out.append(p)
    return out


def read_chain(
    path: str, where: str, chain: tuple[tuple[str, str], ...] = ()
) -> tuple[dict, dict[str, str], list[str]]:
    """``path`` merged over its bases: the mapping, the file that set each leaf, and the files read
    (merge order: bases first, ``path`` last). ``where`` names ``path`` in errors, ``chain`` the files
    that inherit from it (a cycle check)."""
    real = os.path.realpath(path)
    if any(r == real for r, _ in chain):
        raise ConfigError("config base cycle: " + " -> ".join([name for _, name in chain] + [path]))
    data = _read_file(path, where)
    merged: dict = {}
    prov: dict[str, str] = {}
    files: list[str] = []
    for base in _base_paths(data.pop(BASE_KEY, None), path, where):
        sub, sub_prov, sub_files = read_chain(base, base, (*chain, (real, path)))
        merge(merged, prov, sub, sub_prov)
        files += [f for f in sub_files if f not in files]
    merge(merged, prov, data, leaves(data, path))
    return merged, prov, [*files, path]


def config_files(path: str | Path) -> list[Path]:
    """The files the config ``path`` is built from: its bases, theirs, ..., in merge order, ``path`` last
    (what a stage's done-marker must hash so that a change in a base re-runs the stage)."""
    return [Path(f) for f in read_chain(str(path), str(path))[2]]


def read_config(path: str | Path) -> dict:
    """The mapping a config file and its bases merge to (no schema, no overrides, no defaults)."""
    return read_chain(str(path), str(path))[0]
