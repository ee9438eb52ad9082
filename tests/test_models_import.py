"""Checkpoint import/export against transformers (the oracle) and fairseq key layouts; safe loading."""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections import defaultdict
from enum import Enum

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC  # noqa: E402

from distill.models import build_model  # noqa: E402
from distill.models.checkpoint import (  # noqa: E402
    CheckpointError,
    fairseq_to_hf_state_dict,
    hf_to_fairseq_state_dict,
    load_pretrained,
    parse_conv_layers,
    save_pretrained,
)


def hf_tiny(stable: bool, vocab: int = 11) -> Wav2Vec2ForCTC:
    cfg = Wav2Vec2Config(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 3, 3),
        conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if stable else "group",
        do_stable_layer_norm=stable,
        conv_bias=stable,
    )
    torch.manual_seed(3)
    return Wav2Vec2ForCTC(cfg).eval()


def assert_same_as_hf(ours, hf, wave, lengths=None, atol=1e-5):
    """Scores and every hidden state equal transformers' on valid frames."""
    kw = {}
    if lengths is not None:
        kw["attention_mask"] = (torch.arange(wave.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        ref = hf(wave, output_hidden_states=True, **kw)
        out = ours(wave, lengths)
    assert len(out.hidden_states) == len(ref.hidden_states) == hf.config.num_hidden_layers + 1
    for i, n in enumerate(out.lengths.tolist()):
        assert torch.allclose(out.scores[i, :n], torch.log_softmax(ref.logits[i, :n], -1), atol=atol)
        for a, b in zip(out.hidden_states, ref.hidden_states):
            assert torch.allclose(a[i, :n], b[i, :n], atol=atol)


@pytest.mark.parametrize("stable", [False, True])
def test_hf_import_equals_transformers(tmp_path, stable):
    hf = hf_tiny(stable)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert not ours.training and ours.config.do_stable_layer_norm == stable
    wave = torch.randn(2, 3000)
    assert_same_as_hf(ours, hf, wave)
    # padded batch: HF normalises the group-norm CNN over padding, so compare with masking off
    lengths = torch.tensor([3000, 2100])
    wave = wave * (torch.arange(3000)[None] < lengths[:, None])
    ours.config.mask_group_norm = False
    assert_same_as_hf(ours, hf, wave, lengths)


@pytest.mark.parametrize("pos_conv_format", ["weight_norm", "parametrizations", "plain"])
def test_hf_pos_conv_formats(tmp_path, pos_conv_format):
    from safetensors.torch import load_file, save_file

    hf = hf_tiny(True)
    hf.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    pre = "wav2vec2.encoder.pos_conv_embed.conv."
    g = sd.pop(pre + "parametrizations.weight.original0", None)
    v = sd.pop(pre + "parametrizations.weight.original1", None)
    if g is None:
        g, v = sd.pop(pre + "weight_g"), sd.pop(pre + "weight_v")
    if pos_conv_format == "weight_norm":
        sd[pre + "weight_g"], sd[pre + "weight_v"] = g, v
    elif pos_conv_format == "parametrizations":
        sd[pre + "parametrizations.weight.original0"], sd[pre + "parametrizations.weight.original1"] = g, v
    else:
        sd[pre + "weight"] = v * (g / v.norm(dim=(0, 1), keepdim=True))
    save_file(sd, str(tmp_path / "model.safetensors"))
    assert_same_as_hf(load_pretrained(tmp_path), hf, torch.randn(1, 2500))


@pytest.mark.parametrize("stable", [False, True])
def test_save_pretrained_loads_in_transformers(tmp_path, stable):
    hf = hf_tiny(stable)
    hf.save_pretrained(tmp_path / "src")
    ours = load_pretrained(tmp_path / "src")
    save_pretrained(ours, tmp_path / "out")
    back = Wav2Vec2ForCTC.from_pretrained(tmp_path / "out").eval()
    wave = torch.randn(1, 2800)
    with torch.no_grad():
        assert torch.allclose(back(wave).logits, hf(wave).logits, atol=1e-6)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "wav2vec2" and cfg["architectures"] == ["Wav2Vec2ForCTC"]
    # float16 file: half the size, loads back within fp16 precision
    save_pretrained(ours, tmp_path / "half", dtype=torch.float16)
    size32 = (tmp_path / "out" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    half = load_pretrained(tmp_path / "half")
    with torch.no_grad():
        assert torch.allclose(half(wave).scores, ours(wave).scores, atol=2e-2)


def test_our_demo_presets_round_trip_through_transformers(tmp_path):
    torch.manual_seed(0)
    m = build_model("demo-student", 13).eval()
    save_pretrained(m, tmp_path)
    hf = Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    assert_same_as_hf(m, hf, torch.randn(2, 4000))
    m2 = load_pretrained(tmp_path)
    assert m2.config == m.config


def test_pretrained_only_hf_needs_vocab(tmp_path):
    from transformers import Wav2Vec2Model

    cfg = hf_tiny(True).config
    Wav2Vec2Model(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_pretrained(tmp_path)
    m = load_pretrained(tmp_path, vocab_size=5)
    assert m.lm_head.out_features == 5


def test_hf_other_architecture_and_bad_keys(tmp_path):
    hf = hf_tiny(True)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "hubert"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hubert"):
        load_pretrained(tmp_path)
    cfg["model_type"] = "wav2vec2"
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.layers\.2\."):
        load_pretrained(tmp_path)
    cfg["num_hidden_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.layers\.1\."):
        load_pretrained(tmp_path)
    cfg["num_hidden_layers"] = 2
    cfg["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# fairseq
# ---------------------------------------------------------------------------------------------
def fairseq_model_cfg(hf) -> dict:
    c = hf.config
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride))
    return dict(
        _name="wav2vec2",
        extractor_mode="layer_norm" if c.feat_extract_norm == "layer" else "default",
        encoder_layers=c.num_hidden_layers,
        encoder_embed_dim=c.hidden_size,
        encoder_ffn_embed_dim=c.intermediate_size,
        encoder_attention_heads=c.num_attention_heads,
        activation_fn="gelu",
        layer_norm_first=c.do_stable_layer_norm,
        conv_feature_layers=layers,
        conv_bias=c.conv_bias,
        conv_pos=c.num_conv_pos_embeddings,
        conv_pos_groups=c.num_conv_pos_embedding_groups,
    )


def test_fairseq_key_layout():
    hf = hf_tiny(False)
    fs = hf_to_fairseq_state_dict(hf.state_dict())
    assert "w2v_encoder.w2v_model.feature_extractor.conv_layers.0.0.weight" in fs
    assert "w2v_encoder.w2v_model.feature_extractor.conv_layers.0.2.weight" in fs  # group norm
    assert "w2v_encoder.w2v_model.encoder.pos_conv.0.weight_g" in fs
    assert "w2v_encoder.w2v_model.encoder.layers.1.self_attn_layer_norm.weight" in fs
    assert "w2v_encoder.w2v_model.post_extract_proj.weight" in fs and "w2v_encoder.proj.weight" in fs
    fs_ln = hf_to_fairseq_state_dict(hf_tiny(True).state_dict(), finetuned=False)
    assert "feature_extractor.conv_layers.2.2.1.weight" in fs_ln and "layer_norm.weight" in fs_ln
    assert not any(k.startswith("w2v_encoder") for k in fs_ln)
    back = fairseq_to_hf_state_dict(fs)

    def norm(k):
        return k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        )

    assert set(back) == {norm(k) for k in hf.state_dict()}
    assert all(torch.equal(back[norm(k)], v) for k, v in hf.state_dict().items())
    with pytest.raises(CheckpointError, match="unrecognised"):
        fairseq_to_hf_state_dict({**fs, "w2v_encoder.w2v_model.encoder.foo.weight": torch.zeros(1)})


@pytest.mark.parametrize("stable", [False, True])
def test_fairseq_finetuned_round_trip(tmp_path, stable):
    hf = hf_tiny(stable)
    sd = hf_to_fairseq_state_dict(hf.state_dict())
    args = argparse.Namespace(w2v_args=argparse.Namespace(**fairseq_model_cfg(hf)), arch="wav2vec_ctc")
    torch.save({"args": args, "model": sd, "optimizer_history": []}, tmp_path / "ft.pt")
    ours = load_pretrained(tmp_path / "ft.pt")
    assert ours.config.vocab_size == 11
    assert_same_as_hf(ours, hf, torch.randn(2, 3000))


@pytest.fixture
def fake_omegaconf(monkeypatch):
    """Classes laid out like omegaconf's, importable only while saving (the loader never imports them)."""

    def module(name):
        m = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    root, dc, lc, nodes, base = (
        module(n)
        for n in ("omegaconf", "omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.nodes", "omegaconf.base")
    )
    cons = module("fairseq.dataclass.constants")
    module("fairseq")
    module("fairseq.dataclass")

    def cls(mod, name, body):
        c = type(name, (), body)
        c.__module__ = mod.__name__
        c.__qualname__ = name
        setattr(mod, name, c)
        return c

    Metadata = cls(base, "ContainerMetadata", {})
    Choice = Enum("ChoiceEnum", {"layer_norm": "layer_norm", "default": "default"})
    Choice.__module__ = cons.__name__
    Choice.__qualname__ = "ChoiceEnum"
    cons.ChoiceEnum = Choice

    def meta():
        m = Metadata()
        m.__dict__.update(
            ref_type=typing.Any, object_type=dict, optional=True, key=None, flags={}, resolver_cache=defaultdict(dict)
        )
        return m

    AnyNode = cls(nodes, "AnyNode", {"__getstate__": lambda self: dict(self.__dict__)})
    EnumNode = cls(nodes, "EnumNode", {"__getstate__": lambda self: dict(self.__dict__)})

    def wrap(v, parent):
        if isinstance(v, dict):
            return DictConfig(v, parent)
        if isinstance(v, list):
            return ListConfig(v, parent)
        n = EnumNode() if isinstance(v, Enum) else AnyNode()
        n.__dict__.update(_val=v, _metadata=meta(), _parent=parent)
        return n

    def dc_init(self, content, parent=None):
        self.__dict__.update(_metadata=meta(), _parent=parent, _content={k: wrap(v, self) for k, v in content.items()})

    def lc_init(self, content, parent=None):
        self.__dict__.update(_metadata=meta(), _parent=parent, _content=[wrap(v, self) for v in content])

    getstate = {"__getstate__": lambda self: dict(self.__dict__)}
    DictConfig = cls(dc, "DictConfig", {"__init__": dc_init, **getstate})
    ListConfig = cls(lc, "ListConfig", {"__init__": lc_init, **getstate})
    return DictConfig, Choice


def test_fairseq_omegaconf_pretrained_only(tmp_path, monkeypatch, fake_omegaconf):
    DictConfig, Choice = fake_omegaconf
    hf = hf_tiny(True)
    mcfg = fairseq_model_cfg(hf)
    mcfg["extractor_mode"] = Choice.layer_norm
    cfg = DictConfig({"model": mcfg, "task": {"_name": "audio_pretraining", "labels": ["ltr", "wrd"]}})
    sd = hf_to_fairseq_state_dict(hf.state_dict(), finetuned=False)
    sd["quantizer.vars"] = torch.zeros(1, 4, 8)  # pretraining-only parts are dropped
    sd["project_q.weight"] = torch.zeros(8, 8)
    torch.save({"cfg": cfg, "model": sd}, tmp_path / "pre.pt")
    for name in [n for n in sys.modules if n.startswith(("omegaconf", "fairseq"))]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(CheckpointError, match="pass vocab_size"):
        load_pretrained(tmp_path / "pre.pt")
    ours = load_pretrained(tmp_path / "pre.pt", vocab_size=6)
    assert ours.lm_head.out_features == 6
    # the encoder equals HF's (the head is new)
    with torch.no_grad():
        wave = torch.randn(1, 2600)
        ref = hf(wave, output_hidden_states=True)
        out = ours(wave)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert torch.allclose(a, b, atol=1e-5)


def test_fairseq_other_architecture(tmp_path):
    hf = hf_tiny(True)
    mcfg = {**fairseq_model_cfg(hf), "_name": "hubert"}
    torch.save({"cfg": {"model": mcfg}, "model": hf_to_fairseq_state_dict(hf.state_dict(), False)}, tmp_path / "h.pt")
    with pytest.raises(CheckpointError, match="hubert"):
        load_pretrained(tmp_path / "h.pt", vocab_size=3)
    torch.save({"weights": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        load_pretrained(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_pretrained(tmp_path / "junk.pt")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    torch.save({"args": evil, "model": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle global '(posix|os)\.system'"):
        load_pretrained(tmp_path / "evil.pt")
    assert not marker.exists()


class _Getattr:
    """Pickles as ``getattr(owner, name)``, the form newer Pythons use for Enum members."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return (getattr, (self.owner, self.name))


def test_getattr_only_for_configuration_enums(tmp_path):
    """``builtins.getattr`` is accepted only on a configuration enum's stand-in with a string name (its
    member: Python 3.11.2 pickles fairseq's ChoiceEnum values so, 3.11.7 as ``EnumClass(value)``); on anything else
    the checkpoint is refused."""
    from distill.safe_load import load_with_config_stubs

    torch.save({"args": _Getattr(dict, "fromkeys"), "model": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="only members of configuration enums"):
        load_with_config_stubs(tmp_path / "bad.pt")
    torch.save({"args": _Getattr(argparse.Namespace, "__init__"), "model": {}}, tmp_path / "bad2.pt")
    with pytest.raises(CheckpointError, match="only members of configuration enums"):
        load_with_config_stubs(tmp_path / "bad2.pt")


def test_parse_conv_layers():
    spec = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    layers = parse_conv_layers(spec)
    assert layers == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(CheckpointError):
        parse_conv_layers("__import__('os').system('x')")
