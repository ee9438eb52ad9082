"""Length rules for training utterances: output frames of the wav2vec 2.0 CNN and the CTC fit test."""

from __future__ import annotations

from collections.abc import Sequence

# wav2vec 2.0 feature encoder: 7 conv layers, total stride 320 samples = 20 ms at 16 kHz
W2V2_KERNELS = (10, 3, 3, 3, 3, 2, 2)
W2V2_STRIDES = (5, 2, 2, 2, 2, 2, 2)


def w2v2_num_frames(
    num_samples: int, kernels: Sequence[int] = W2V2_KERNELS, strides: Sequence[int] = W2V2_STRIDES
) -> int:
    """Frames the W2V2 CNN outputs for ``num_samples`` input samples (no padding, floor per layer)."""
    n = int(num_samples)
    for k, s in zip(kernels, strides):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def ctc_min_frames(token_ids: Sequence[int]) -> int:
    """Fewest frames a CTC path needs: one per token plus a blank between equal neighbours."""
    repeats = sum(1 for a, b in zip(token_ids, token_ids[1:]) if a == b)
    return len(token_ids) + repeats
