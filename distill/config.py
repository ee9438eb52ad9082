"""Typed YAML configuration: dataclass schemas, validated at start-up with errors that name the key.

Every step (`python -m distill.bin.<step> --config conf/x.yaml [key=value ...]`) declares its options
as a dataclass. :func:`load_config` reads the YAML file, applies ``key=value`` overrides (dotted keys
reach nested sections), and checks every value against the schema before any work starts:

* an unknown key, a value of the wrong type or a missing required key raises :class:`ConfigError`
  naming the key and the file;
* a key given twice in one mapping (at any depth) is refused, naming the key path and both lines;
* numbers may be written as in Python or YAML 1.2 (``1e-4``, ``-1e-3``, ``5E-4``, ``.5``; YAML 1.1 alone
  reads the first three as strings), in files and overrides alike; a float option refuses ``nan`` and
  ``inf`` (``.nan``, ``.inf``): no option takes them, and limits that can be switched off say how
  (``grad_clip <= 0``), or take a large number (``1e9``);
* fields declared with :func:`path_field` (``must_exist=True``) must name an existing file or
  directory; with ``output_dir=True`` a directory that exists or can be created (not a file, not a
  dangling symbolic link, no file among its parents).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = ["ConfigError", "missing_path", "output_dir_problem", "path_field", "load_config", "parse_cli",
           "config_to_dict", "dump_config"]


class ConfigError(ValueError):
    """A configuration value is unknown, missing or of the wrong type; the message names key and file."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading the float spellings YAML 1.1 leaves as strings (``1e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."))


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
                raise ConfigError(f"{where}: duplicate key '{sub}' (lines {first[k.tag, k.value]} and {line}): "
                                  "the second would silently replace the first; keep one")
            first[k.tag, k.value] = line
            _check_duplicates(v, sub, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", where, seen)


def _load_yaml(text: str, where: str, path: str = "") -> Any:
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


def missing_path(value: str | Path) -> str:
    """``path 'x' does not exist``, with the absolute path that was tried when ``value`` is relative
    (relative paths are taken from the working directory, which a recipe's run.sh sets to its own)."""
    p = Path(value)
    where = "" if p.is_absolute() else f" (looked for '{os.path.abspath(p)}')"
    return f"path '{value}' does not exist{where}"


def output_dir_problem(value: str | Path) -> str | None:
    """Why ``value`` can be neither used nor created as a directory (it, or a parent, is a file or a
    dangling symbolic link), or None."""
    p = Path(value)
    for q in (p, *p.parents):
        if q.is_dir():
            return None
        if q.is_symlink() and not q.exists():
            what = f"is a dangling symbolic link (to '{os.readlink(q)}')"
        elif q.exists():
            what = "is a file" if q.is_file() else "exists and is not a directory"
        else:
            continue
        return f"'{q}' {what}, not a directory" if q == p else f"'{value}' cannot be created: '{q}' {what}"
    return None


def path_field(default: Any = dataclasses.MISSING, *, must_exist: bool = True, output_dir: bool = False) -> Any:
    """A dataclass field holding a filesystem path, checked for existence when ``must_exist``;
    ``output_dir``: a directory the step writes, which must be one or be creatable (see
    :func:`output_dir_problem`), checked before any work like every other option."""
    meta = {"path": True, "must_exist": must_exist and not output_dir, "output_dir": output_dir}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, src: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (lists, dataclasses)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, src)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message says more
            raise ConfigError(errors[0])
        raise ConfigError(f"{src}: key '{key}': {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{src}: key '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src}: key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{src}: key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]", src) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]", src) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key '{key}': expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{key}.{k}", src) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key '{key}': expected a section (mapping), got {value!r}")
        return _build(tp, value, src, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{src}: key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: key '{key}': expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{src}: key '{key}': {value} is not a finite number (no option "
                              "accepts nan or inf)")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{src}: key '{key}': expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{src}: key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type[T], data: dict, src: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{src}: unknown key '{prefix}{unknown[0]}' (known keys in this section: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, f in names.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{src}: missing required key '{key}'")
            continue
        value = _convert(data[name], hints[name], key, src)
        if f.metadata.get("path") and value is not None and f.metadata.get("must_exist"):
            if not Path(value).exists():
                raise ConfigError(f"{src}: key '{key}': {missing_path(value)}")
        if f.metadata.get("output_dir") and value is not None and (why := output_dir_problem(value)):
            raise ConfigError(f"{src}: key '{key}': {why}")
        kwargs[name] = value
    obj = cls(**kwargs)
    # defaults that name paths must exist too
    for name, f in names.items():
        if name not in data and f.metadata.get("path") and f.metadata.get("must_exist"):
            value = getattr(obj, name)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"{src}: key '{prefix}{name}' (default): {missing_path(value)}")
        if name not in data and f.metadata.get("output_dir") and (why := output_dir_problem(getattr(obj, name) or ".")):
            raise ConfigError(f"{src}: key '{prefix}{name}' (default): {why}")
    return obj


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a ``cls`` instance from a YAML file plus ``key=value`` overrides, validating everything.

    Override values are parsed as YAML (``lr=1e-4``, ``freeze=true``, ``chunks=[16,24]``), like the file.
    """
    data: dict = {}
    src = config_source(path, overrides)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            loaded = _load_yaml(p.read_text(encoding="utf-8"), src)
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{src}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{src}: the top level must be a mapping of keys to values")
        data = loaded
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value")
        k, v = ov.split("=", 1)
        try:
            parsed = _load_yaml(v, f"override '{ov}'", k.strip()) if v != "" else ""
        except yaml.YAMLError:
            parsed = v
        _set_dotted(data, k.strip(), parsed)
    return _build(cls, data, src)


def config_source(path: str | Path | None, overrides: Sequence[str] = ()) -> str:
    """How error messages name a step's configuration: the file, and whether overrides changed it."""
    src = str(path) if path is not None else "<defaults>"
    return src + (" (with command-line overrides)" if overrides else "")


def config_to_dict(cfg: Any) -> dict:
    """A plain dict (YAML-serialisable) of a config dataclass."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(cfg)


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the effective configuration next to a step's outputs, for reproducibility."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


def parse_cli(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None,
              check: Callable[[T], None] | None = None) -> T:
    """Standard command line of a step: ``--config FILE`` and ``key=value`` overrides.

    ``--print-config`` prints the effective configuration and exits. Configuration errors exit with
    status 2 and a one-line message naming the key and the file, before any work starts; ``check``
    adds a step's own validation (cross-field rules, inputs that must exist) raising ConfigError.
    """
    ap = argparse.ArgumentParser(description=description or cls.__doc__)
    ap.add_argument("--config", help="YAML file with the step's options")
    ap.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="override config values")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(cls, args.config, args.overrides)
        if check is not None:
            try:
                check(cfg)
            except ConfigError as e:
                raise ConfigError(f"{config_source(args.config, args.overrides)}: {e}") from None
    except ConfigError as e:
        ap.exit(2, f"error: {e}\n")
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg
