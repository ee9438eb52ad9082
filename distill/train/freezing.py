"""Parameter freezing rules of the trainer: which trainable parameters are frozen at a given update,
from the ``train.freeze`` prefixes and extra predicates (e.g. a stage's feature-only phase)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from distill.config import ConfigError

from .config import FreezeConfig

__all__ = ["FreezeRule", "make_freeze_rules", "frozen_at"]

FreezeRule = tuple[Callable[[str], bool], int, str]  # (predicate on a parameter name, steps, description)


def make_freeze_rules(
    freeze: Sequence[FreezeConfig], names: Sequence[str], extra: Sequence[tuple[Callable[[str], bool], int]] = ()
) -> list[FreezeRule]:
    """One rule per ``freeze`` entry (each must match a parameter name in ``names``) plus the ``extra``
    ``(predicate, steps)`` rules; ``steps = -1`` freezes for the whole run."""
    rules = []
    for i, fr in enumerate(freeze):
        prefixes = tuple(fr.prefixes)
        if not any(n.startswith(prefixes) for n in names):
            tops = sorted({n.split(".")[0] + "." for n in names})
            raise ConfigError(
                f"train config: key 'freeze[{i}].prefixes': {list(prefixes)} match no "
                f"parameter of the model (top-level names: {', '.join(tops[:12])})"
            )
        rules.append(((lambda n, p=prefixes: n.startswith(p)), fr.steps, f"prefixes {list(prefixes)}"))
    for fn, steps in extra:
        rules.append((fn, steps, getattr(fn, "__name__", "callable")))
    return rules


def frozen_at(rules: Sequence[FreezeRule], trainable: Collection[str], step: int) -> frozenset[str]:
    """The names in ``trainable`` that the rules active at update ``step`` freeze."""
    active = [fn for fn, steps, _ in rules if steps == -1 or step < steps]
    return frozenset(n for n in trainable if any(fn(n) for fn in active))
