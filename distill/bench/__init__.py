"""Benchmarks (not tests) behind ``python -m distill.bin.bench_*``: one module per benchmark.

:mod:`.data` (stages 0-2 at corpus scale) imports neither torch nor lhotse, so that the process
measuring the stages' peak memory stays small; nothing is imported here for the same reason.
"""


class UsageError(ValueError):
    """A command-line argument found unusable only after loading (the ``bin`` module reports it as a
    usage error, exit status 2)."""
