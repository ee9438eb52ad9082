"""A tiny wav2vec 2.0 configuration, lang dir and saved model shared by the model, streaming, export,
transcribe and fault tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distill.data.tokenizer import Tokenizer
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


def write_char_lang(lang: Path, texts: Sequence[str]) -> Tokenizer:
    """A character lang dir for ``texts`` (tokens, words, lexicon, ``train_text.txt``, a token-bigram
    ``P.arpa``), as stage 1-2 would write it; returns its tokenizer."""
    from distill.data.tokenizer import build_char_tokenizer, write_lang_files
    from distill.graph.den import train_token_lm

    tok = build_char_tokenizer(texts)
    write_lang_files(lang, tok, {w for t in texts for w in t.split()})
    (lang / "train_text.txt").write_text("".join(t + "\n" for t in texts))
    train_token_lm([tok.encode(t) for t in texts], tok.pieces, 2).write_arpa(lang / "P.arpa")
    return tok


def save_tiny_model(out: Path, vocab_size: int, **kw) -> W2V2Config:
    """A :func:`tiny` model with 2 heads and a 64-dim feed-forward (``kw`` overrides), random weights drawn
    after ``torch.manual_seed(0)``, saved in Hugging Face format at ``out``; returns its config."""
    import torch

    from distill.models import W2V2Model
    from distill.models.checkpoint import save_pretrained

    cfg = tiny(
        **{"vocab_size": vocab_size, "num_attention_heads": 2, "intermediate_size": 64, "fbank_channels": 64, **kw}
    )
    torch.manual_seed(0)
    save_pretrained(W2V2Model(cfg).eval(), out)
    return cfg
