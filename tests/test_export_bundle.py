"""distill.bin.export (the deployment bundle), its sherpa-onnx form decoded by sherpa-onnx, and the
onnxruntime-only streaming example of docs/deploy.md, each against ``distill.bin.transcribe``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from model_fixtures import tiny, write_char_lang  # noqa: E402

from distill.bin import export as export_cli  # noqa: E402
from distill.bin import transcribe as transcribe_cli  # noqa: E402
from distill.data.tokenizer import copy_token_files  # noqa: E402
from distill.models import W2V2Model, load_pretrained, save_pretrained  # noqa: E402
from distill.models.bundle import read_onnx_metadata  # noqa: E402
from distill.models.export import onnx_session, run_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "onnx_streaming.py"
TEXTS = ["MY DEAR SISTER", "THE FAMILY OF DASHWOOD", "HAD LONG BEEN SETTLED"]


def _model(lang: Path, out: Path, vocab: int, seed: int = 0, **kw) -> Path:
    """A tiny random model whose greedy output is varied text (a stronger head; ``<sos/eos>`` never wins,
    as in a trained model, which never sees it as a target) saved with its tokens."""
    torch.manual_seed(seed)
    m = W2V2Model(tiny(vocab_size=vocab, **kw)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(8.0)
        m.lm_head.bias[1] = -100.0
    save_pretrained(m, out)
    copy_token_files(lang, out)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    lang = tmp / "lang"
    tok = write_char_lang(lang, TEXTS)
    rng = np.random.default_rng(0)
    wavs = []
    for i, n in enumerate([13000, 21000, 30500]):  # 16-bit PCM: the streaming example reads it with `wave`
        x = 0.05 * rng.standard_normal(n) * (1 + np.sin(np.arange(n) / (700 + 300 * i))) + 0.004 * (i - 1)
        wavs.append(tmp / f"u{i}.wav")
        sf.write(wavs[-1], np.clip(x, -1, 1), 16000, subtype="PCM_16")
    return tmp, lang, tok, wavs


def transcribe(capsys, model: Path, wavs, *extra) -> dict[str, str]:
    rc = transcribe_cli.main([*map(str, wavs), "--model", str(model), "--num-threads", "1", *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return {ln.split(" ", 1)[0]: (ln.split(" ", 1) + [""])[1] for ln in out.splitlines() if ln.strip()}


def export(tmp: Path, model: Path, lang: Path, out: str, *extra) -> Path:
    rc = export_cli.main(["--model", str(model), "--lang-dir", str(lang), "--out", str(tmp / out), *extra])
    assert rc == 0
    return tmp / out


def test_export_offline_bundle_files_metadata_card(env, capsys):
    tmp, lang, tok, wavs = env
    model = _model(lang, tmp / "offline_model", tok.vocab_size, wave_norm="utterance")
    graph = tmp / "lang_test"
    graph.mkdir()
    (graph / "HLG.fst").write_bytes(b"not a real graph: the exporter copies it")
    results = tmp / "exp" / "decode" / "results.json"
    results.parent.mkdir(parents=True)
    rows = [
        {"name": "student", "path": str(model), "status": "ok", "form": "fp32", "chunk_frames": None,
         "wer_by_method": {"test": {"greedy": 12.5, "hlg": 10.25}}},
        {"name": "other", "path": str(tmp / "elsewhere"), "status": "ok", "wer_by_method": {"test": {"greedy": 99.0}}},
    ]  # fmt: skip
    results.write_text(json.dumps(rows))
    out = export(tmp, model, lang, "export", "--graph-dir", str(graph), "--results", str(results))
    capsys.readouterr()
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {
        "offline.onnx", "offline.int8.onnx", "sherpa-onnx/model.onnx", "sherpa-onnx/model.int8.onnx",
        "sherpa-onnx/tokens.txt", "tokens.txt", "HLG.fst", "words.txt", "README.md", "export.json",
    }  # fmt: skip
    assert (out / "tokens.txt").read_text() == (lang / "tokens.txt").read_text()
    assert (out / "words.txt").read_text() == (lang / "words.txt").read_text()
    assert not (tmp / "export.partial").exists()
    meta = read_onnx_metadata(out / "offline.onnx")
    assert meta["vocab_size"] == str(tok.vocab_size) and meta["frame_shift_ms"] == "20"
    assert meta["wave_norm"] == "utterance" and meta["sample_rate"] == "16000" and meta["precision"] == "float32"
    assert read_onnx_metadata(out / "offline.int8.onnx")["precision"].startswith("int8")
    assert "sherpa-onnx normalises" in read_onnx_metadata(out / "sherpa-onnx/model.onnx")["input_scaling"]
    card = json.loads((out / "export.json").read_text())
    assert card["streaming"] is False and "full-context" in card["notes"][0]
    assert [r["name"] for r in card["results"]] == ["student"]
    readme = (out / "README.md").read_text()
    for s in ("10.25", "hlg", "from_omnilingual_asr_ctc", "onnxruntime", "full-context", "offline.int8.onnx"):
        assert s in readme, s
    # the offline ONNX file gives the model's greedy text: the card's onnxruntime recipe, run
    ref = transcribe(capsys, model, wavs)
    sess = onnx_session(out / "offline.onnx")
    pieces = [ln.split()[0] for ln in (out / "tokens.txt").read_text().splitlines()]
    for w in wavs:
        x = torch.from_numpy(sf.read(w, dtype="float32")[0])[None]
        scores, n = run_onnx(sess, x, torch.tensor([x.shape[1]]))
        ids = scores[0, : int(n[0])].argmax(-1).tolist()
        keep = [t for i, t in enumerate(ids) if t > 1 and (i == 0 or t != ids[i - 1])]
        assert " ".join("".join(pieces[t] for t in keep).replace("\u2581", " ").split()) == ref[w.stem]
    assert len(set("".join(ref.values()))) > 3  # varied text: the comparison means something


def test_export_refuses_bad_inputs(env, capsys):
    tmp, lang, tok, _ = env
    model = _model(lang, tmp / "m_bad", tok.vocab_size)
    assert export_cli.main(["--model", str(model), "--lang-dir", str(tmp / "nope"), "--out", str(tmp / "x")]) == 2
    assert "has neither" in capsys.readouterr().err
    args = ["--model", str(model), "--lang-dir", str(lang), "--out", str(tmp / "x"), "--graph-dir", str(tmp)]
    assert export_cli.main(args) == 2
    assert "no HLG.fst" in capsys.readouterr().err
    assert not (tmp / "x").exists()


try:
    import sherpa_onnx
except ImportError:  # the "onnx" extra installs it
    sherpa_onnx = None
needs_sherpa = pytest.mark.skipif(sherpa_onnx is None, reason="sherpa-onnx is not installed (pip install sherpa-onnx)")


def sherpa_texts(model: Path, tokens: Path, wavs) -> dict[str, str]:
    r = sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc(model=str(model), tokens=str(tokens), num_threads=1)
    out = {}
    for w in wavs:
        x, sr = sf.read(w, dtype="float32")
        st = r.create_stream()
        st.accept_waveform(sr, x)
        r.decode_stream(st)
        out[Path(w).stem] = " ".join(st.result.text.split())  # sherpa spells "▁" as a leading space
    return out


@needs_sherpa
def test_sherpa_onnx_equals_transcribe_utterance_scaling(env, capsys):
    """wave_norm 'utterance': sherpa-onnx's own normalisation is turned into the model's, exactly."""
    tmp, lang, tok, wavs = env
    model = _model(lang, tmp / "m_utt", tok.vocab_size, seed=1, wave_norm="utterance")
    out = export(tmp, model, lang, "x_utt", "--no-int8")
    capsys.readouterr()
    ref = transcribe(capsys, model, wavs)
    assert sherpa_texts(out / "sherpa-onnx/model.onnx", out / "sherpa-onnx/tokens.txt", wavs) == ref
    assert len(set("".join(ref.values()))) > 3
    # and the scores: the graph on sherpa's normalised samples == the model on the raw ones
    sess = onnx_session(out / "sherpa-onnx/model.onnx")
    m = load_pretrained(model).eval()
    for w in wavs:
        x = sf.read(w, dtype="float32")[0].astype(np.float64)
        y = (x - x.mean()) / np.sqrt((x * x).mean() - x.mean() ** 2 + 1e-5)
        got = run_onnx(sess, torch.from_numpy(y[None].astype(np.float32)))[0]
        with torch.no_grad():
            want = m(torch.from_numpy(x[None].astype(np.float32))).scores
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


@needs_sherpa
@pytest.mark.parametrize("norm", ["fixed", "running"])
def test_sherpa_onnx_relevels_level_dependent_scaling(env, capsys, norm):
    """wave_norm 'fixed'/'running': sherpa-onnx removes the level; the graph re-levels each utterance to
    (wave_mean, wave_std). sherpa text == transcribe text of the re-levelled utterance, for every
    utterance; and == transcribe of the utterance itself when it already has that mean and std."""
    tmp, lang, tok, wavs = env
    mean, std = 0.001, 0.3
    model = _model(lang, tmp / f"m_{norm}", tok.vocab_size, seed=2, wave_norm=norm, wave_mean=mean, wave_std=std)
    out = export(tmp, model, lang, f"x_{norm}", "--no-int8")
    capsys.readouterr()
    relevelled = []
    for w in wavs:
        x = sf.read(w, dtype="float32")[0].astype(np.float64)
        r = (x - x.mean()) / x.std() * std + mean
        relevelled.append(tmp / f"{norm}_relevel" / w.name)
        relevelled[-1].parent.mkdir(exist_ok=True)
        sf.write(relevelled[-1], r.astype(np.float32), 16000, subtype="FLOAT")
    got = sherpa_texts(out / "sherpa-onnx/model.onnx", out / "sherpa-onnx/tokens.txt", wavs)
    assert got == transcribe(capsys, model, relevelled)
    # the re-levelled files already have (wave_mean, wave_std): sherpa on them == the model on them
    assert sherpa_texts(out / "sherpa-onnx/model.onnx", out / "sherpa-onnx/tokens.txt", relevelled) == got
    assert len(set("".join(got.values()))) > 3


def test_streaming_example_equals_transcribe_streaming(env, capsys):
    """docs/examples/onnx_streaming.py (onnxruntime only, state in / state out) reproduces
    ``transcribe --streaming``; the example is the code docs/deploy.md shows."""
    tmp, lang, tok, wavs = env
    model = _model(lang, tmp / "m_stream", tok.vocab_size, seed=3, wave_norm="running", wave_std=0.1, chunk_frames=4)
    out = export(tmp, model, lang, "x_stream")
    capsys.readouterr()
    assert {"streaming.onnx", "streaming.int8.onnx"} <= {p.name for p in out.iterdir()}
    meta = read_onnx_metadata(out / "streaming.onnx")
    assert meta["chunk_frames"] == "4" and meta["chunk_input_samples"] == str(4 * 320 + 80)
    assert meta["overlap_samples"] == "80" and meta["left_chunks"] == "all"
    assert meta["state_names"] == "pos_ctx,kv_cache,processed,wave_stats"
    shapes = json.loads(meta["state_shapes"])
    assert shapes["kv_cache"] == [2, 2, 1, 4, "Tc", 8] and shapes["wave_stats"] == [1, 3]
    assert shapes["pos_ctx"] == [1, 15, 32] and json.loads(meta["state_dtypes"])["wave_stats"] == "float64"
    ref = transcribe(capsys, model, wavs, "--streaming", "--chunk-frames", "4")
    assert len(set("".join(ref.values()))) > 3
    for f in ("streaming.onnx", "streaming.int8.onnx"):
        cmd = [sys.executable, str(EXAMPLE), "--model", str(out / f), "--tokens", str(out / "tokens.txt")]
        p = subprocess.run([*cmd, *map(str, wavs)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        got = {ln.split(" ", 1)[0]: (ln.split(" ", 1) + [""])[1] for ln in p.stdout.splitlines()}
        assert "partial u2:" in p.stderr
        if f == "streaming.onnx":
            assert got == ref
        else:  # int8 weights: close to, not equal to, fp32 -- most characters agree
            assert set(got) == set(ref)
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert EXAMPLE.read_text(encoding="utf-8").strip() in doc
