"""Typed YAML configuration: dataclass schemas, validated at start-up with errors that name the key.

Every step (`python -m distill.bin.<step> --config conf/x.yaml [key=value ...]`) declares its options
as a dataclass. :func:`load_config` reads the YAML file, applies ``key=value`` overrides (dotted keys
reach nested sections), and checks every value against the schema before any work starts:

* an unknown key, a value of the wrong type or a missing required key raises :class:`ConfigError`
  naming the key and the file;
* fields declared with :func:`path_field` (``must_exist=True``) must name an existing file or
  directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = ["ConfigError", "path_field", "load_config", "parse_cli", "config_to_dict", "dump_config"]


class ConfigError(ValueError):
    """A configuration value is unknown, missing or of the wrong type; the message names key and file."""


def path_field(default: Any = dataclasses.MISSING, *, must_exist: bool = True) -> Any:
    """A dataclass field holding a filesystem path, checked for existence when ``must_exist``."""
    meta = {"path": True, "must_exist": must_exist}
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
        return float(value)
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
                raise ConfigError(f"{src}: key '{key}': path '{value}' does not exist")
        kwargs[name] = value
    obj = cls(**kwargs)
    # defaults that name paths must exist too
    for name, f in names.items():
        if name not in data and f.metadata.get("path") and f.metadata.get("must_exist"):
            value = getattr(obj, name)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"{src}: key '{prefix}{name}' (default): path '{value}' does not exist")
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

    Override values are parsed as YAML scalars (``lr=1e-4``, ``freeze=true``, ``chunks=[16,24]``).
    """
    data: dict = {}
    src = config_source(path, overrides)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
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
            parsed = yaml.safe_load(v) if v != "" else ""
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
