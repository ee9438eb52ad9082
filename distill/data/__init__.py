"""Data: corpus preparation (stages 0–1), tokenizers, and the training data pipeline.

Public API for the trainer and decoders::

    from distill.data import Tokenizer, load_cuts, make_dataloader, mask_time_channels

    tok = Tokenizer.load("data/lang")
    dl = make_dataloader(load_cuts("data/lang", "train"), tok, max_duration=200, shuffle=True, seed=1)
    for epoch in range(n):
        dl.set_epoch(epoch)
        for batch in dl:   # audio [B,S] float32, audio_lens [B], tokens, texts, cut_ids
            ...
        state = dl.state_dict()   # resume mid-epoch with dl.load_state_dict(state)
"""

import importlib
from typing import Any

# Re-exported lazily (PEP 562) so that ``import distill.data.tokenizer`` (stage 1, the decode-graph builder)
# does not pull in lhotse and torch.
_EXPORTS = {
    "WaveformTimeMask": "augment",
    "mask_time_channels": "augment",
    "AsrDataset": "dataset",
    "ctc_min_frames": "filters",
    "w2v2_num_frames": "filters",
    "AsrDataLoader": "loader",
    "make_dataloader": "loader",
    "load_cuts": "manifests",
    "read_cuts_index": "manifests",
    "read_splits_index": "manifests",
    "TextNormalizer": "text",
    "TextNormConfig": "text",
    "Tokenizer": "tokenizer",
    "TokenizerError": "tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"distill.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'distill.data' has no attribute {name!r}")


__all__ = [
    "AsrDataLoader",
    "AsrDataset",
    "TextNormConfig",
    "TextNormalizer",
    "Tokenizer",
    "TokenizerError",
    "WaveformTimeMask",
    "ctc_min_frames",
    "load_cuts",
    "make_dataloader",
    "mask_time_channels",
    "read_cuts_index",
    "read_splits_index",
    "w2v2_num_frames",
]
