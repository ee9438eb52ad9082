"""Typed YAML configuration: dataclass schemas, validated at start-up with errors that name the key.

Every step (`python -m distill.bin.<step> --config conf/x.yaml [key=value ...]`) declares its options
as a dataclass. :func:`load_config` reads the YAML file and the files it inherits from, applies
``key=value`` overrides (dotted keys reach nested sections), and checks every value against the schema
before any work starts:

* inheritance: a file may say ``base: other.yaml`` (relative to the file; or a list, merged in order) and
  state only what differs: mappings merge key by key, scalars and lists replace; a cycle or a missing
  base is an error naming the files. ``--print-config`` shows where each value was set (a file,
  ``override`` or ``default``); :func:`config_files` (``python -m distill.config FILE``) lists the files;
* an unknown key, a value of the wrong type or a missing required key raises :class:`ConfigError`
  naming the key and the file that set it;
* a key given twice in one mapping (at any depth) is refused, naming the key path and both lines;
* numbers may be written as in Python or YAML 1.2 (``1e-4``, ``-1e-3``, ``5E-4``, ``.5``; YAML 1.1 alone
  reads the first three as strings), in files and overrides alike; a float option refuses ``nan`` and
  ``inf`` (``.nan``, ``.inf``): no option takes them, and limits that can be switched off say how
  (``grad_clip <= 0``), or take a large number (``1e9``);
* fields declared with :func:`path_field` (``must_exist=True``) must name an existing file or
  directory; with ``output_dir=True`` a directory that exists or can be created (not a file, not a
  dangling symbolic link, no file among its parents).

Reading the files (YAML rules, ``base:`` merging, provenance) is :mod:`distill.config_yaml`; this module
validates the merged mapping against the schema and is the steps' command line.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from distill.config_yaml import BASE_KEY, ConfigError, config_files, drop, leaves, load_yaml, read_chain, read_config

T = TypeVar("T")

__all__ = [
    "BASE_KEY",
    "ConfigError",
    "config_files",
    "config_to_dict",
    "dump_config",
    "format_config",
    "load_config",
    "load_config_with_sources",
    "missing_path",
    "output_dir_problem",
    "parse_cli",
    "path_field",
    "read_config",
]

OVERRIDE, DEFAULT = "override", "default"  # provenance of values set on the command line / by the schema

Where = Callable[[str], str]  # dotted key -> how an error about it names its source


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


def _convert(value: Any, tp: Any, key: str, where: Where) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (lists, dataclasses)."""
    src = where(key)
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
                return _convert(value, a, key, where)
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
            return tuple(_convert(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key '{key}': expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key '{key}': expected a section (mapping), got {value!r}")
        return _build(tp, value, where, prefix=f"{key}.")
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
            raise ConfigError(f"{src}: key '{key}': {value} is not a finite number (no option accepts nan or inf)")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{src}: key '{key}': expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{src}: key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


# False while --print-config reads a config whose inputs need not exist yet (show_config)
_CHECK_PATHS: contextvars.ContextVar[bool] = contextvars.ContextVar("check_paths", default=True)


def _build(cls: type[T], data: dict, where: Where, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    paths = _CHECK_PATHS.get()
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{where(prefix + str(unknown[0]))}: unknown key '{prefix}{unknown[0]}' "
            f"(known keys in this section: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, f in names.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where(key)}: missing required key '{key}'")
            continue
        value = _convert(data[name], hints[name], key, where)
        if paths and f.metadata.get("path") and value is not None and f.metadata.get("must_exist"):
            if not Path(value).exists():
                raise ConfigError(f"{where(key)}: key '{key}': {missing_path(value)}")
        if paths and f.metadata.get("output_dir") and value is not None and (why := output_dir_problem(value)):
            raise ConfigError(f"{where(key)}: key '{key}': {why}")
        kwargs[name] = value
    obj = cls(**kwargs)
    # defaults that name paths must exist too
    for name, f in names.items() if paths else ():
        if name not in data and f.metadata.get("path") and f.metadata.get("must_exist"):
            value = getattr(obj, name)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"{where(prefix + name)}: key '{prefix}{name}' (default): {missing_path(value)}")
        if name not in data and f.metadata.get("output_dir") and (why := output_dir_problem(getattr(obj, name) or ".")):
            raise ConfigError(f"{where(prefix + name)}: key '{prefix}{name}' (default): {why}")
    return obj


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def _setter(prov: dict[str, str], key: str) -> str | None:
    """Where ``key`` was set: its own entry, else that of the value enclosing it (a list), else that of
    the first key under it (an unknown section)."""
    k = key
    while k:
        if k in prov:
            return prov[k]
        k = k[: max(k.rfind("."), k.rfind("["), 0)]
    return next((s for p, s in prov.items() if p.startswith(key + ".")), None)


def load_config_with_sources(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), check_paths: bool = True
) -> tuple[T, dict[str, str]]:
    """:func:`load_config`, also returning where each value was set: ``{dotted key: file or "override"}``
    (keys absent are the schema's defaults), for :func:`format_config`. ``check_paths=False`` skips the
    existence checks of :func:`path_field` fields (types and keys are still checked)."""
    data: dict = {}
    prov: dict[str, str] = {}
    src = config_source(path, overrides)
    top = str(path) if path is not None else None
    if top is not None:
        data, prov, _ = read_chain(top, src)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value")
        k, v = ov.split("=", 1)
        k = k.strip()
        try:
            parsed = load_yaml(v, f"override '{ov}'", k) if v != "" else ""
        except yaml.YAMLError:
            parsed = v
        _set_dotted(data, k, parsed)
        drop(prov, k)
        prov.update(leaves({k: parsed}, OVERRIDE))

    def where(key: str) -> str:  # a key set by a base names that file (and the file built from it)
        s = _setter(prov, key)
        return src if s in (None, OVERRIDE, top) else f"{s} (base of {top})"

    token = _CHECK_PATHS.set(check_paths)
    try:
        return _build(cls, data, where), prov
    finally:
        _CHECK_PATHS.reset(token)


def show_config(cls: type, path: str | Path | None, overrides: Sequence[str] = ()) -> None:
    """``--print-config``: print the effective configuration with where each value was set, also before
    the inputs it names exist (a missing one is reported by the full check that follows it)."""
    cfg, sources = load_config_with_sources(cls, path, overrides, check_paths=False)
    print(format_config(cfg, sources, path), end="", flush=True)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a ``cls`` instance from a YAML file (merged over its bases) plus ``key=value`` overrides,
    validating everything. Override values are parsed as YAML (``lr=1e-4``, ``freeze=true``,
    ``chunks=[16,24]``), like the file; an override replaces the value at its key (a mapping too)."""
    return load_config_with_sources(cls, path, overrides)[0]


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


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style)."""
    return yaml.safe_dump([value], default_flow_style=True, width=2**31, sort_keys=False).strip()[1:-1]


def format_config(cfg: Any, sources: dict[str, str], path: str | Path | None = None) -> str:
    """The effective configuration as YAML, each value followed by ``# <where it was set>``: a file,
    ``override`` (command line) or ``default`` (the schema); ``sources`` from :func:`load_config_with_sources`."""

    def lines(d: dict, prefix: str, pad: str) -> list[str]:
        out = []
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out += [f"{pad}{_flow(k)}:", *lines(v, key + ".", pad + "  ")]
            else:
                out.append(f"{pad}{_flow(k)}: {_flow(v)}  # {_setter(sources, key) or DEFAULT}")
        return out

    head = (
        f"# effective configuration of {path if path is not None else '<defaults>'}; after each value: "
        f"the file that set it, {OVERRIDE} (command line) or {DEFAULT} (schema)"
    )
    return "\n".join([head, *lines(config_to_dict(cfg), "", "")]) + "\n"


def _setter_note(msg: str, sources: dict[str, str], top: str | None) -> str:
    """`` (set in FILE)`` for a step's own check naming a key that one base file set, else ""."""
    key = m[1] if (m := re.search(r"key '([^']+)'", msg)) else "\0"
    hits = {s for k, s in sources.items() if k == key or k.endswith("." + key)}
    s = hits.pop() if len(hits) == 1 else None
    return f" (set in {s})" if s not in (None, OVERRIDE, top) else ""


def parse_cli(
    cls: type[T],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    check: Callable[[T], None] | None = None,
) -> T:
    """Standard command line of a step: ``--config FILE`` and ``key=value`` overrides.

    ``--print-config`` prints the effective configuration, with where each value was set, and exits: 0,
    or 2 with the error after it when the step would refuse the config (an input that does not exist yet).
    Configuration errors exit with status 2 and a one-line message naming the key and the file, before
    any work starts; ``check`` adds a step's own validation (cross-field rules, inputs that must exist)
    raising ConfigError.
    """
    ap = argparse.ArgumentParser(description=description or cls.__doc__)
    ap.add_argument("--config", help="YAML file with the step's options (it may inherit: base: other.yaml)")
    ap.add_argument("--print-config", action="store_true", help="print the effective config (with sources), exit")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="override config values")
    args = ap.parse_args(argv)
    try:
        if args.print_config:
            show_config(cls, args.config, args.overrides)
        cfg, sources = load_config_with_sources(cls, args.config, args.overrides)
        if check is not None:
            try:
                check(cfg)
            except ConfigError as e:
                note = _setter_note(str(e), sources, args.config)
                raise ConfigError(f"{config_source(args.config, args.overrides)}: {e}{note}") from None
    except ConfigError as e:
        ap.exit(2, f"error: {e}\n")
    if args.print_config:
        raise SystemExit(0)
    return cfg


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m distill.config FILE...``: the files each config is built from (:func:`config_files`),
    one per line; exit status 2 and a one-line message on a bad chain."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("files", nargs="+", metavar="FILE")
    try:
        print("\n".join(str(p) for f in ap.parse_args(argv).files for p in config_files(f)))
    except ConfigError as e:
        ap.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
