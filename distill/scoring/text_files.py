"""Score a Kaldi ``text`` file of hypotheses against one of references: what ``python -m distill.bin.score``
runs, optionally writing icefall's ``recogs-``/``errs-``/``wer-summary-`` files."""

from __future__ import annotations

from pathlib import Path

from .report import read_kaldi_text, write_scoring_files
from .wer import Mode, validate_refs, wer

__all__ = ["score_text_files"]


def score_text_files(
    ref: str | Path,
    hyp: str | Path,
    mode: Mode = "sclite",
    normalize: str | None = None,
    case_sensitive: bool | None = None,
    strict: bool = False,
    out_dir: str | Path | None = None,
    test_set: str | None = None,
    suffix: str | None = None,
    key: str | None = None,
) -> dict:
    """The :func:`~distill.scoring.wer` result of ``hyp`` against ``ref`` (both Kaldi text files).

    ``strict`` refuses empty references (:func:`~distill.scoring.validate_refs`). With ``out_dir`` the
    result files of ``test_set`` and ``suffix`` are written there too (:func:`write_scoring_files`; the
    result then has their paths under ``files``). Bad input raises OSError, ValueError or TypeError."""
    refs = read_kaldi_text(ref)
    hyps = read_kaldi_text(hyp)
    if strict:
        validate_refs(refs, normalize)
    if out_dir:
        return write_scoring_files(
            out_dir,
            test_set,
            suffix,
            refs,
            hyps,
            mode=mode,
            normalize=normalize,
            case_sensitive=case_sensitive,
            key=key,
        )
    return wer(refs, hyps, mode=mode, normalize=normalize, case_sensitive=case_sensitive)
