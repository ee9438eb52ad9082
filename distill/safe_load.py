"""Loading pickled torch files without running code from them: the one place that calls ``torch.load``.

Every loader of the toolkit goes through here: training checkpoints and model files (``ckpt-*.pt``,
``signal-*.pt``, ``last.pt``, ``best.pt``, ``avg<N>.pt``), the denominator graph, teacher-cache entries
(:func:`load`), and pretrained imports from other toolkits (HF ``pytorch_model.bin``, fairseq ``.pt``:
:func:`load_with_config_stubs`). A file that cannot be read raises :class:`CheckpointError`, whose message
names the file and says why (:func:`load_error_detail`); a refused Python object is named, and the
message never advises retrying with ``weights_only=False``.

* :func:`load` is ``torch.load(weights_only=True)``: tensors and plain Python values only.
* :func:`load_with_config_stubs` also accepts the configuration objects fairseq pickles
  (``argparse.Namespace``, omegaconf/fairseq/typing/enum classes): those become inert stand-ins that only
  record their pickled state (:func:`to_plain` turns them into dicts), so omegaconf need not be installed.
  Any other global (e.g. ``os.system``) is refused.

The format tags of the files our training writes (:data:`CKPT_FORMAT`, :data:`MODEL_FORMAT`) live here
too: the model layer recognises such files and the training layer writes them.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CKPT_FORMAT",
    "MODEL_FORMAT",
    "CheckpointError",
    "refused_global",
    "load_error_detail",
    "load_failure",
    "load",
    "load_with_config_stubs",
    "to_plain",
]

CKPT_FORMAT = "distill-train-checkpoint-v1"
"""``format`` of a full training checkpoint (model, optimizer, scheduler, trainer and RNG states)."""
MODEL_FORMAT = "distill-model-v1"
"""``format`` of a model file (``last.pt``, ``best.pt``, ``avg<N>.pt``: a state dict plus plain metadata)."""


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint, model, graph or cache file cannot be read, written or used; the message names the file.

    Both a ValueError and a RuntimeError: it unites the pretrained importer's error (a ValueError) and the
    training checkpoints' one (a RuntimeError), so every ``except`` written for either still catches it.
    A load failure (:func:`load_failure`) also carries the file (``path``) and the reason (``detail``).
    """

    path: Path | None = None
    detail: str | None = None

    @classmethod
    def for_file(cls, message: str, path: str | Path, detail: str) -> CheckpointError:
        """An error with ``path`` and ``detail`` set (they survive pickling: they live in ``__dict__``)."""
        err = cls(message)
        err.path, err.detail = Path(path), detail
        return err


# --------------------------------------------------------------------------------------------------
# the one message for a failed load
# --------------------------------------------------------------------------------------------------
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# torch's weights-only errors open with paragraphs that advise retrying with weights_only=False
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1) ", "(2) ")


def refused_global(e: BaseException) -> str | None:
    """The Python object ``torch.load(weights_only=True)`` refused to unpickle, when that is what failed."""
    m = _REFUSED_GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
    return m.group(1) if m else None


def _informative_line(msg: str) -> str:
    """The line of torch's error that says what is wrong (not its generic advice paragraphs)."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:
        if not ln.startswith(_TORCH_BOILERPLATE):
            return ln
    return lines[0] if lines else ""


def load_error_detail(e: BaseException) -> str:
    """One line saying why a ``weights_only`` load failed: the refused object, or the error's type and
    informative line (never torch's advice to retry without ``weights_only``, which would run whatever
    code the file carries)."""
    name = refused_global(e)
    if name is not None:
        return (
            f"it holds the Python object '{name}', which none of our files contains: refused without running "
            "it (a foreign or tampered file; never load it with weights_only=False)"
        )
    return f"{type(e).__name__}: {_informative_line(str(e))}"


def load_failure(path: str | Path, e: BaseException, what: str = "checkpoint") -> CheckpointError:
    """The :class:`CheckpointError` for ``e`` raised while loading ``path`` (a ``what``): ``<what> '<path>'
    is refused|is unreadable (truncated or corrupt?): <detail>``. ``path`` and ``detail`` are kept as
    attributes, for callers that word the failure their own way."""
    state = "is refused" if refused_global(e) else "is unreadable (truncated or corrupt?)"
    detail = load_error_detail(e)
    return CheckpointError.for_file(f"{what} '{path}' {state}: {detail}", path, detail)


def load(path: str | Path, map_location: str | torch.device = "cpu", *, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; :class:`CheckpointError` naming the file (a ``what``) if it
    does not exist or cannot be read (truncated zip, bad pickle, disallowed global ...)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError.for_file(f"{what} '{path}' does not exist", path, "it does not exist") from None
    except Exception as e:  # truncated zip, bad pickle, disallowed global ...
        raise load_failure(path, e, what) from e


# --------------------------------------------------------------------------------------------------
# configuration objects of other toolkits as inert stand-ins
# --------------------------------------------------------------------------------------------------
# Globals that become inert stand-ins (configuration objects of fairseq checkpoints).
_STUB_PREFIXES = ("omegaconf.", "fairseq.", "typing.", "enum.", "pathlib.", "collections.")
_SAFE_BUILTINS = {f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, str, int, float, bool)}
_SAFE_BUILTINS.update({"__builtin__." + k.split(".", 1)[1]: v for k, v in _SAFE_BUILTINS.items()})
_SAFE_BUILTINS["argparse.Namespace"] = argparse.Namespace


class _Stub:
    """Inert stand-in for a pickled configuration class: remembers constructor args and state."""

    qualified_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args = args
        obj._state = None
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self._state = state

    def __repr__(self) -> str:
        return f"<stub {self.qualified_name} args={self._args!r}>"


_STUB_CACHE: dict[str, type] = {}


def _enum_member(owner: Any, name: Any) -> _Stub:
    """Stands in for ``builtins.getattr`` in a checkpoint: some Pythons (3.11.2; not 3.11.7) pickle an Enum
    member (fairseq's ``ChoiceEnum`` values) as ``getattr(EnumClass, "name")`` instead of ``EnumClass(value)``.
    Only a stand-in class and a string name are accepted (the member becomes a stand-in holding its name, as
    the other form gives for fairseq's string-valued enums); anything else is refused."""
    if not (isinstance(owner, type) and issubclass(owner, _Stub) and isinstance(name, str)):
        raise pickle.UnpicklingError(
            f"refusing getattr({type(owner).__name__}, {type(name).__name__}) in a checkpoint: only "
            "members of configuration enums are allowed"
        )
    return owner(name)


def _stub_for(name: str) -> type:
    if name not in _STUB_CACHE:
        _STUB_CACHE[name] = type(name.rsplit(".", 1)[-1], (_Stub,), {"qualified_name": name})
    return _STUB_CACHE[name]


def load_with_config_stubs(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` that also accepts fairseq's configuration objects.

    Unknown globals of configuration libraries are allowlisted as inert stand-ins (one retry per
    name); any other global raises :class:`CheckpointError` naming it and the file."""
    path = Path(path)
    allowed: list = [(v, k) for k, v in _SAFE_BUILTINS.items()] + [(_enum_member, "builtins.getattr")]
    for _ in range(200):
        try:
            with torch.serialization.safe_globals(allowed):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:
                    if "mmap" not in str(e):
                        raise
                    return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            name = refused_global(e)
            if name and name.startswith(_STUB_PREFIXES) and "blocked" not in str(e):
                allowed.append((_stub_for(name), name))
                continue
            detail = load_error_detail(e)
            if name:
                raise CheckpointError.for_file(
                    f"{path}: refusing to unpickle global '{name}': only tensors and argparse/omegaconf/fairseq "
                    f"configuration objects are allowed in a checkpoint",
                    path,
                    detail,
                ) from None
            raise CheckpointError.for_file(
                f"{path}: cannot be loaded safely as a torch checkpoint ({detail})", path, detail
            ) from None
        except (OSError, EOFError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            detail = load_error_detail(e)
            raise CheckpointError.for_file(
                f"{path}: cannot be loaded safely as a torch checkpoint ({detail})", path, detail
            ) from None
    raise CheckpointError(f"{path}: too many distinct configuration classes in the pickle")


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn stand-ins (omegaconf DictConfig/ListConfig/nodes, enums), Namespaces and containers into
    plain dicts, lists and scalars."""
    if _depth > 100:
        raise CheckpointError("configuration nested too deeply")
    d = _depth + 1
    if isinstance(obj, dict):
        return {k: to_plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, d) for v in obj]
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v, d) for k, v in vars(obj).items()}
    if isinstance(obj, type) and issubclass(obj, _Stub):
        return obj.qualified_name
    if isinstance(obj, _Stub):
        st = obj._state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], dict):
            st = st[0]
        if isinstance(st, dict):
            if "_content" in st:
                return to_plain(st["_content"], d)
            if "_val" in st:
                return to_plain(st["_val"], d)
            if "_value_" in st:
                return to_plain(st["_value_"], d)
            return {k: to_plain(v, d) for k, v in st.items() if k != "_parent"}
        if obj._args:
            return to_plain(obj._args[0], d)
        return None
    return obj
