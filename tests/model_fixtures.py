"""A tiny wav2vec 2.0 configuration shared by the model, streaming and export tests."""
from __future__ import annotations

from distill.models import W2V2Config


def tiny(**kw) -> W2V2Config:
    """Pre-LN, layer-norm CNN (streamable), 2 x 32 dims, 7 tokens, 8 fbank channels; ``kw`` overrides."""
    base = dict(
        vocab_size=7,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
        fbank_channels=8,
    )
    base.update(kw)
    return W2V2Config(**base)
