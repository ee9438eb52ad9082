"""Tiny pretrained wav2vec 2.0 checkpoints in the layouts users download, made here (no model hub):

* :func:`write_lv60_hf` -- a Hugging Face directory with facebook/wav2vec2-large-lv60's architecture and
  preprocessor: layer-norm CNN with conv bias, stable (pre-) layer norm, the pretraining model
  (``Wav2Vec2ForPreTraining``: quantizer and projection weights present, no CTC head),
  ``preprocessor_config.json`` with ``do_normalize: true``; tiny dimensions.
* :func:`write_fairseq_libri960` -- a fairseq ``.pt`` laid out as fairseq wrote ``libri960_big.pt``
  (wav2vec 2.0 Large pretrained on LibriSpeech 960 h): an ``args`` namespace (arch ``wav2vec2``,
  ``extractor_mode: default`` = group-norm CNN without conv bias, post-LN encoder, task
  ``audio_pretraining`` with ``normalize: false``), fairseq parameter names, the pretraining-only
  modules (quantizer, ``project_q``, ``final_proj``, ``mask_emb``) and optimizer bookkeeping.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# the same tiny encoder for both: 4 x 32 (2 heads), a 7-layer CNN of 32 channels with the standard
# kernels and strides (20 ms frames)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def write_lv60_hf(out: Path, seed: int = 0) -> Path:
    """An lv60-architecture pretraining checkpoint as ``save_pretrained`` writes it; returns ``out``."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    cfg = Wav2Vec2Config(
        **TINY,
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
        feat_extract_activation="gelu",
        num_codevector_groups=2,
        num_codevectors_per_group=8,
        codevector_dim=16,
        proj_codevector_dim=16,
        architectures=["Wav2Vec2ForPreTraining"],
    )
    torch.manual_seed(seed)
    Wav2Vec2ForPreTraining(cfg).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)
    return out


def write_fairseq_libri960(path: Path, seed: int = 0) -> Path:
    """A ``libri960_big.pt``-layout pretraining checkpoint (tiny); returns ``path``."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from distill.models.checkpoint import hf_to_fairseq_state_dict

    hf_cfg = Wav2Vec2Config(
        **TINY, feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False, vocab_size=4
    )
    torch.manual_seed(seed)
    sd = hf_to_fairseq_state_dict(Wav2Vec2ForCTC(hf_cfg).state_dict(), finetuned=False)
    d, groups, per_group, q_dim = TINY["hidden_size"], 2, 8, 16
    sd["quantizer.vars"] = torch.randn(1, groups * per_group, q_dim // groups)
    sd["quantizer.weight_proj.weight"] = torch.randn(groups * per_group, TINY["conv_dim"][-1])
    sd["quantizer.weight_proj.bias"] = torch.zeros(groups * per_group)
    sd["project_q.weight"] = torch.randn(q_dim, q_dim)
    sd["project_q.bias"] = torch.zeros(q_dim)
    sd["final_proj.weight"] = torch.randn(q_dim, d)
    sd["final_proj.bias"] = torch.zeros(q_dim)
    sd.setdefault("mask_emb", torch.rand(d))
    conv = " + ".join(
        f"[({c}, {k}, {s})]" for c, k, s in zip(TINY["conv_dim"], TINY["conv_kernel"], TINY["conv_stride"])
    )
    args = argparse.Namespace(
        arch="wav2vec2",
        task="audio_pretraining",
        criterion="wav2vec",
        normalize=False,
        sample_rate=16000,
        extractor_mode="default",
        conv_feature_layers=conv,
        conv_bias=False,
        encoder_layers=TINY["num_hidden_layers"],
        encoder_embed_dim=d,
        encoder_ffn_embed_dim=TINY["intermediate_size"],
        encoder_attention_heads=TINY["num_attention_heads"],
        activation_fn="gelu",
        layer_norm_first=False,
        conv_pos=TINY["num_conv_pos_embeddings"],
        conv_pos_groups=TINY["num_conv_pos_embedding_groups"],
        dropout=0.0,
        attention_dropout=0.1,
        activation_dropout=0.0,
        encoder_layerdrop=0.2,
        final_dim=q_dim,
        latent_vars=per_group,
        latent_groups=groups,
        latent_dim=q_dim,
        quantize_targets=True,
        mask_prob=0.65,
        mask_length=10,
        feature_grad_mult=0.1,
        logit_temp=0.1,
        max_update=600000,
        lr=[0.0003],
    )
    torch.save(
        {
            "args": args,
            "model": sd,
            "optimizer_history": [
                {"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam", "num_updates": 600000}
            ],
            "extra_state": {"epoch": 250, "train_iterator": {"epoch": 250}},
            "last_optimizer_state": None,
        },
        path,
    )
    return path
