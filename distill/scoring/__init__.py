"""WER scoring: sclite-exact and Levenshtein alignments, GigaSpeech normalisation, icefall-style files.

``wer(refs, hyps)`` is the entry point; ``python -m distill.bin.score`` is its command line.
"""

from .align import Alignment, ascii_lower, count_edits, levenshtein_align, sclite_align
from .normalize import GIGASPEECH_NON_SCORING, get_normalizer, gigaspeech_normalize
from .report import (
    per_utt_details,
    read_kaldi_text,
    write_errs,
    write_recogs,
    write_scoring_files,
    write_wer_summary,
)
from .wer import UttScore, format_wer, score_utterances, summarize, validate_refs, wer

__all__ = [
    "Alignment",
    "ascii_lower",
    "count_edits",
    "levenshtein_align",
    "sclite_align",
    "GIGASPEECH_NON_SCORING",
    "get_normalizer",
    "gigaspeech_normalize",
    "per_utt_details",
    "read_kaldi_text",
    "write_errs",
    "write_recogs",
    "write_scoring_files",
    "write_wer_summary",
    "UttScore",
    "format_wer",
    "score_utterances",
    "summarize",
    "validate_refs",
    "wer",
]
