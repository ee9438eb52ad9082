"""A packaged model in plain transformers: pipeline and Wav2Vec2Processor + Wav2Vec2ForCTC give the text
of ``distill.bin.transcribe``, HF's logits equal ours for each input scaling it can express, streaming
students are refused, weights load as float32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from model_fixtures import tiny
from safetensors import safe_open

from distill.bin import package_model, transcribe
from distill.data.tokenizer import Tokenizer, build_char_tokenizer, train_bpe, write_lang_files
from distill.decode.greedy import collapse
from distill.models import W2V2Model, save_pretrained

transformers = pytest.importorskip("transformers")

TEXTS = ["MY DEAR SISTER", "THE FAMILY OF DASHWOOD", "HAD LONG BEEN SETTLED"]
LENGTHS = (16000, 9000, 12345)
SCALINGS = {
    "none": dict(),
    "utterance": dict(wave_norm="utterance"),
    "fixed": dict(wave_norm="fixed", wave_mean=0.01, wave_std=0.07),
    # group-norm CNN without conv biases: folding adds a bias to the first layer, zero ones to the others
    "fixed-group": dict(wave_norm="fixed", wave_mean=-0.02, wave_std=0.2, feat_extract_norm="group", conv_bias=False),
}


def _model(vocab: int, seed: int, **kw) -> W2V2Model:
    """A tiny random model whose argmax changes from frame to frame (so decoding has work to do)."""
    torch.manual_seed(seed)
    m = W2V2Model(tiny(vocab_size=vocab, **kw)).eval()
    with torch.no_grad():
        m.lm_head.weight.normal_(0.0, 0.4)
        m.lm_head.bias[:4] = torch.tensor([1.0, 0.0, 0.0, 3.0])  # blanks and word boundaries (▁ is id 3)
    return m


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A char lang dir, test audio (different levels) and, per scaling, a trained-model dir and its package."""
    tmp = tmp_path_factory.mktemp("hf")
    tok = build_char_tokenizer(TEXTS)
    lang = tmp / "lang"
    write_lang_files(lang, tok, {w for t in TEXTS for w in t.split()})
    rng = np.random.default_rng(0)
    wavs = []
    for i, n in enumerate(LENGTHS):
        w = (0.05 * (i + 1) * rng.standard_normal(n) + 0.01 * i).astype(np.float32)
        sf.write(tmp / f"u{i}.wav", w, 16000, subtype="FLOAT")
        wavs.append(tmp / f"u{i}.wav")
    out = {}
    for k, (name, kw) in enumerate(SCALINGS.items()):
        model = _model(tok.vocab_size, k, **kw)
        save_pretrained(model, tmp / name / "model")
        pkg = tmp / name / "pkg"
        rc = package_model.main(["--model", str(tmp / name / "model"), "--out", str(pkg), "--lang-dir", str(lang)])
        assert rc == 0
        out[name] = (model, pkg)
    return tmp, wavs, out


def _transcribe(capsys, model_dir, wavs) -> list[str]:
    rc = transcribe.main(["--model", str(model_dir), "--num-threads", "1", *map(str, wavs)])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    return [(ln.split(" ", 1) + [""])[1] for ln in lines]


@pytest.mark.parametrize("name", list(SCALINGS))
def test_pipeline_text_equals_transcribe(made, capsys, name):
    _, wavs, models = made
    _, pkg = models[name]
    ours = _transcribe(capsys, pkg, wavs)
    assert any(len(t.split()) > 1 for t in ours), ours  # words and word boundaries to decode
    asr = transformers.pipeline("automatic-speech-recognition", model=str(pkg), device="cpu")
    theirs = [asr(sf.read(w, dtype="float32")[0])["text"] for w in wavs]
    assert theirs == ours
    assert asr.model.dtype == torch.float32


@pytest.mark.parametrize("name", ["utterance", "fixed"])
def test_processor_and_model_text_equals_transcribe(made, capsys, name):
    """A padded batch through Wav2Vec2Processor + Wav2Vec2ForCTC, decoded with the processor."""
    _, wavs, models = made
    _, pkg = models[name]
    ours = _transcribe(capsys, pkg, wavs)
    proc = transformers.Wav2Vec2Processor.from_pretrained(str(pkg))
    model = transformers.Wav2Vec2ForCTC.from_pretrained(str(pkg)).eval()
    audio = [sf.read(w, dtype="float32")[0] for w in wavs]
    inputs = proc(audio, sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ids = model(**inputs).logits.argmax(-1)
    frames = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
    theirs = proc.batch_decode([i[:n] for i, n in zip(ids.tolist(), frames.tolist())])
    assert theirs == ours


@pytest.mark.parametrize("name", list(SCALINGS))
def test_hf_logits_equal_ours(made, name):
    """HF's raw-audio path (feature extractor + model) against our model before packaging."""
    _, wavs, models = made
    ours_model, pkg = models[name]
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(pkg))
    assert fe.do_normalize == (name == "utterance")
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(str(pkg)).eval()
    for w in wavs:
        audio = sf.read(w, dtype="float32")[0]
        x = fe(audio, sampling_rate=16000, return_tensors="pt")
        with torch.inference_mode():
            theirs = torch.log_softmax(hf(x["input_values"]).logits, -1)
            ours = ours_model(torch.from_numpy(audio)[None]).scores
        assert theirs.shape == ours.shape
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_fixed_scaling_is_folded(made):
    _, _, models = made
    cfg = json.loads((models["fixed-group"][1] / "config.json").read_text())
    assert cfg["conv_bias"] is True and cfg["distill"]["wave_norm"] == "none"
    card = json.loads((models["fixed-group"][1] / "card.json").read_text())
    assert "folded into the first convolution" in card["input_scaling"]


def test_float32_by_default_and_float16_loads_as_float32(made, tmp_path):
    tmp, _, models = made
    pkg = models["none"][1]
    assert json.loads((pkg / "config.json").read_text())["dtype"] == "float32"
    with safe_open(str(pkg / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    half = tmp_path / "half"
    args = ["--model", str(tmp / "none" / "model"), "--out", str(half), "--lang-dir", str(tmp / "lang")]
    assert package_model.main(args + ["--dtype", "float16"]) == 0
    with safe_open(str(half / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert transformers.Wav2Vec2ForCTC.from_pretrained(str(half)).dtype == torch.float32  # not silently fp16


@pytest.mark.parametrize(
    "kw, why",
    [
        (dict(chunk_frames=4, causal_pos_conv=True), "attends in chunks of 4 frames"),
        (dict(wave_norm="running", wave_std=0.1), "running statistics"),
        (dict(causal_pos_conv=True), "positional convolution is causal"),
    ],
)
def test_streaming_student_is_refused(made, tmp_path, capsys, kw, why):
    tmp, _, _ = made
    save_pretrained(_model(build_char_tokenizer(TEXTS).vocab_size, 0, **kw), tmp_path / "model")
    args = ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "pkg"), "--lang-dir", str(tmp / "lang")]
    assert package_model.main(args) == 2
    err = capsys.readouterr().err
    assert "is a streaming model" in err and why in err and "distill.bin.export" in err
    assert not (tmp_path / "pkg").exists() and not (tmp_path / "pkg.partial").exists()


def _hf_tokenizer_of(tok: Tokenizer, tmp_path):
    from distill.models.hf_format import write_hf_tokenizer

    write_hf_tokenizer(tok.pieces, tmp_path)
    return transformers.AutoTokenizer.from_pretrained(str(tmp_path))


def _check_decoding(tok: Tokenizer, hf_tok, seed: int) -> None:
    """Random frame-label sequences (blanks, repeats, <sos/eos>, <unk>, runs of word boundaries)."""
    rng = np.random.default_rng(seed)
    boundary = [i for i, p in enumerate(tok.pieces) if p.startswith("\u2581")]
    for _ in range(300):
        n = int(rng.integers(0, 30))
        frames = rng.integers(0, tok.vocab_size, n)
        frames[rng.random(n) < 0.3] = 0
        at = rng.random(n) < 0.2
        frames[at] = rng.choice(boundary, int(at.sum()))
        frames = frames.tolist()
        assert hf_tok.decode(frames) == tok.decode(collapse(frames)), frames


def test_char_decoding_is_exact(tmp_path):
    tok = build_char_tokenizer(TEXTS)
    _check_decoding(tok, _hf_tokenizer_of(tok, tmp_path), 0)


def test_bpe_decoding_is_exact(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"{t}\n" for t in TEXTS * 20 + ["SENSE AND SENSIBILITY", "HELLO WORLD"] * 5))
    tok = train_bpe(text, tmp_path / "lang", vocab_size=40)
    assert any(p.startswith("\u2581") and len(p) > 1 for p in tok.pieces)  # pieces with a boundary inside
    _check_decoding(tok, _hf_tokenizer_of(tok, tmp_path / "lang"), 1)


def test_wav2vec2_ctc_tokenizer_reads_the_vocab(made):
    """The vocab.json view for code that builds Wav2Vec2CTCTokenizer itself: same ids; with ``▁`` as the
    delimiter and ``<blk>`` as pad it decodes characters as we do (but for <sos/eos> and runs of ``▁``)."""
    _, _, models = made
    pkg = models["none"][1]
    t = transformers.Wav2Vec2CTCTokenizer(str(pkg / "vocab.json"), word_delimiter_token="\u2581", pad_token="<blk>")
    tok = Tokenizer.load(pkg)
    assert t.pad_token_id == 0
    assert [t.convert_ids_to_tokens(i) for i in range(tok.vocab_size)] == tok.pieces
    ids = [3, 4, 4, 0, 4, 5, 3, 6, 2]
    assert t.decode(ids) == tok.decode(collapse(ids))
