"""Audio length faults through the real entry points (docs/reliability.md, "Audio length").

* Audio shorter than one frame (10 ms files, 1 ms segments) gives an empty hypothesis with a warning naming
  the utterance, in ``transcribe`` (streaming and offline models, any batch size) and stage 6 (every form:
  fp32, int8, ONNX), and never stops the other utterances; any other per-utterance failure in
  ``transcribe`` is reported and skipped.
* Long recordings are read in blocks and decoded in bounded memory: an offline model in overlapping
  windows (same text as a whole-file decode; frame-exact scores where the receptive field fits the
  window's context), a streaming model streamed with a bounded key/value cache.
"""

from __future__ import annotations

import ast
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from distill.bin import build_decode_graph, decode, transcribe
from distill.models import save_pretrained
from distill.models.wav2vec2 import W2V2Model

sys.path.insert(0, str(Path(__file__).parent))
from model_fixtures import tiny, write_char_lang  # noqa: E402

TEXTS = ["A CAT SAT", "THE DOG RAN", "A RAT", "THE CAT RAN", "DOG SAT"]
CHUNK = 8


def _noise(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A char lang dir with HLG/HP graphs, and a tiny offline and a tiny streaming model (chunk 8, unbounded
    left context: what stage 2 trains by default; attention sharpened so that the left context it is given
    shows in its text) saved like training saves them."""
    root = tmp_path_factory.mktemp("audio_length")
    lang = root / "lang"
    tok = write_char_lang(lang, TEXTS)
    assert build_decode_graph.main([f"lang_dir={lang}", f"out_dir={root / 'lang_test'}", "lm_order=2"]) == 0
    models = {}
    for name, chunk in (("offline", 0), ("streaming", CHUNK)):
        torch.manual_seed(7)
        m = W2V2Model(tiny(vocab_size=tok.vocab_size)).eval()
        if chunk:
            m.set_streaming(chunk, None)
            with torch.no_grad():
                for layer in m.encoder.layers:
                    a = layer.attention
                    for lin in (a.q_proj, a.k_proj, a.v_proj, a.out_proj):
                        lin.weight.mul_(10.0)
        models[name] = save_pretrained(m, root / "exp" / name / "model")
    return root, lang, models


def _transcribe(capsys, *args) -> tuple[int, list[str], str]:
    rc = transcribe.main([str(a) for a in args] + ["--num-threads", "1"])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


# ------------------------------------------------------------------------------------ short audio
@pytest.mark.parametrize("kind", ["streaming", "offline"])
def test_short_audio_in_transcribe(env, capsys, tmp_path, kind):
    """The issue's case: the third of five files is 10 ms; every batch size and (streaming model) the
    chunk-wise recogniser give all five lines, the short one empty, with a warning naming it."""
    root, lang, models = env
    lines = []
    for i, seconds in enumerate([1.0, 1.3, 0.010, 1.5, 0.8]):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, _noise(seconds, i), 16000)
        lines.append(f"u{i} {p}\n")
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(lines))
    runs = [["--batch-size", 1], ["--batch-size", 4]] + (
        [["--streaming", "--chunk-frames", CHUNK]] if kind == "streaming" else []
    )
    for extra in runs:
        rc, out, err = _transcribe(capsys, "--model", models[kind], "--lang-dir", lang, "--wav-scp", scp, *extra)
        assert rc == 0, (extra, err)
        assert [ln.split()[0] for ln in out] == [f"u{i}" for i in range(5)], extra
        assert out[2] == "u2" and all(len(ln.split()) > 1 for ln in out[:2] + out[3:]), out
        assert "warning: utterance 'u2' is shorter than one frame (10.0 ms < 25 ms): empty hypothesis" in err
        assert "transcribed 5 utterances (1 shorter than one frame: empty), skipped 0" in err


def test_failing_utterance_is_skipped_in_transcribe(env, capsys, tmp_path, monkeypatch):
    """A forward pass that fails for one utterance (here: injected) skips that utterance only, naming it;
    the batch it was in is decoded one by one; exit status 0 since others were transcribed."""
    root, lang, models = env
    paths = []
    for i, seconds in enumerate([1.0, 1.25, 0.9]):
        paths.append(tmp_path / f"f{i}.wav")
        sf.write(paths[-1], _noise(seconds, 10 + i), 16000)
    real = W2V2Model.forward

    def forward(self, wave, lengths=None):
        if 20000 in (lengths.tolist() if lengths is not None else [wave.shape[1]]):  # f1's 1.25 s
            raise RuntimeError("injected failure")
        return real(self, wave, lengths)

    monkeypatch.setattr(W2V2Model, "forward", forward)
    rc, out, err = _transcribe(capsys, "--model", models["offline"], "--lang-dir", lang, *paths, "--batch-size", 3)
    assert rc == 0, err
    assert [ln.split()[0] for ln in out] == ["f0", "f2"]
    assert "skipping utterance 'f1': RuntimeError: injected failure" in err
    assert "transcribed 2 utterances, skipped 1" in err


@pytest.fixture(scope="module")
def stage6(env):
    """Stage 6 set-up: test set ``short`` = 3 utterances and two 1 ms segments of a longer recording, test
    set ``long`` = one 7 s recording (and a 1 s one)."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    root, lang, models = env
    wav = root / "wav"
    wav.mkdir()
    index = {"test": {}}
    parts = {
        "short": [("s-0", 1.0), ("s-1", 1.2), ("s-2", 0.9), ("s-3", 0.001), ("s-4", 0.001)],
        "long": [("l-0", 7.0), ("l-1", 1.0)],
    }
    for part, utts in parts.items():
        cuts = []
        for i, (uid, dur) in enumerate(utts):
            rid = f"rec-{uid}"
            sf.write(wav / f"{rid}.wav", _noise(max(dur, 0.5), 20 + i + 10 * len(part)), 16000)
            rec = Recording.from_file(wav / f"{rid}.wav", recording_id=rid)
            start = 0.25 if dur < 0.01 else 0.0  # the 1 ms ones are segments inside a recording
            cut = MonoCut(id=uid, start=start, duration=dur, channel=0, recording=rec)
            text = TEXTS[i % len(TEXTS)]
            cut.supervisions = [SupervisionSegment(id=uid, recording_id=rid, start=0.0, duration=dur, text=text)]
            cuts.append(cut)
        CutSet.from_cuts(cuts).to_file(lang / f"cuts_test_{part}.jsonl.gz")
        index["test"][part] = f"cuts_test_{part}.jsonl.gz"
    (lang / "cuts.yaml").write_text(yaml.safe_dump(index))
    return root, lang, models


def _decode(stage6, tmp: Path, rows: list[dict], test_set: str, **kw) -> dict[str, dict]:
    root, lang, models = stage6
    cfg = {
        "lang_dir": str(lang),
        "graph_dir": str(root / "lang_test"),
        "exp_root": str(tmp / "exp"),
        "out_dir": str(tmp / "exp" / "decode"),
        "methods": ["greedy", "hp"],
        "primary_method": "greedy",
        "beam": 8.0,
        "max_active": 200,
        "scoring_mode": "levenshtein",
        "speed_max_utts": 2,
        "piece_ms": 100.0,
        "test_sets": [test_set],
        "models": rows,
        **kw,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "decode.yaml"
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert decode.main(["--config", str(conf)]) == 0
    assert (tmp / "exp" / "RESULTS.md").is_file()
    return {r["name"]: r for r in json.loads((tmp / "exp" / "results.json").read_text())}


def _recogs(result: dict, test_set: str, method: str) -> dict[str, str]:
    """utt id -> hypothesis of an icefall-style recogs file."""
    hyps = {}
    for ln in (Path(result["decode_dir"]) / f"recogs-{test_set}-{method}.txt").read_text().splitlines():
        uid, _, rest = ln.partition(":\t")
        if rest.startswith("hyp="):
            hyps[uid] = " ".join(ast.literal_eval(rest[4:]))
    return hyps


def test_short_segments_in_stage6(stage6, tmp_path):
    """Two 1 ms segments (a batch of their own with max_batch_size 2): every row and form is evaluated,
    their hypotheses are empty, they are listed; RESULTS.md is written."""
    root, lang, models = stage6
    rows = [
        {"name": "student", "path": str(models["offline"])},
        {"name": "streaming", "path": str(models["streaming"])},
        {"name": "streaming-int8", "path": str(models["streaming"]), "form": "int8"},
        {"name": "streaming-onnx", "path": str(models["streaming"]), "form": "onnx"},
    ]
    by = _decode(stage6, tmp_path, rows, "short", max_batch_size=2)
    assert list(by) == ["student", "streaming", "streaming-int8", "streaming-onnx"]
    for name, r in by.items():
        assert r["status"] == "ok", name
        assert r["short_utts"] == {"short": ["s-3", "s-4"]}, name
        assert r["errors"]["short"]["greedy"]["num_utts"] == 5
        for m in ("greedy", "hp"):
            hyps = _recogs(r, "short", m)
            assert hyps["s-3"] == hyps["s-4"] == "", (name, m)
            assert all(hyps[u] for u in ("s-0", "s-1", "s-2")), (name, m, hyps)
    md = (tmp_path / "exp" / "RESULTS.md").read_text()
    assert "Shorter than one frame, so decoded as empty hypotheses: `short`: 2 (`s-3`, `s-4`)" in md


def test_long_recording_in_stage6(stage6, tmp_path):
    """max_whole_seconds 3: the 7 s utterance is windowed by the offline row (same text as whole) and
    streamed by the streaming rows (torch, and the exported ONNX chunk step) with the left context bounded
    to 3 s (= the chunk-masked forward with that left context); greedy and WFST (HP) decode the stitched
    scores."""
    from distill.data.tokenizer import Tokenizer
    from distill.decode.greedy import ctc_greedy
    from distill.models import load_pretrained

    root, lang, models = stage6
    rows = [
        {"name": "student", "path": str(models["offline"])},
        {"name": "streaming", "path": str(models["streaming"])},
        {"name": "streaming-onnx", "path": str(models["streaming"]), "form": "onnx"},
    ]
    long = _decode(
        stage6, tmp_path / "long", rows, "long", max_whole_seconds=3.0, window_seconds=2.0, window_overlap_seconds=0.6
    )
    whole = _decode(stage6, tmp_path / "whole", rows[:1], "long")
    assert all(r["long_utts"] == {"long": ["l-0"]} for r in long.values())
    assert whole["student"]["long_utts"] == {}
    for m in ("greedy", "hp"):
        assert _recogs(long["student"], "long", m) == _recogs(whole["student"], "long", m), m
        assert _recogs(long["streaming-onnx"], "long", m) == _recogs(long["streaming"], "long", m), m
    model = load_pretrained(models["streaming"]).eval()
    wave, _ = sf.read(root / "wav" / "rec-l-0.wav", dtype="float32")
    texts = {}
    for left in (None, math.ceil(3.0 * 50 / CHUNK)):
        model.set_streaming(CHUNK, left)
        with torch.no_grad():
            out = model(torch.from_numpy(wave[: 7 * 16000])[None])
        texts[left] = " ".join(Tokenizer.load(lang).decode(ctc_greedy(out.scores, out.lengths)[0]).split())
    streamed = _recogs(long["streaming"], "long", "greedy")["l-0"]
    assert streamed == texts[math.ceil(3.0 * 50 / CHUNK)] != texts[None]  # the bound is what changes the text
    md = (tmp_path / "long" / "exp" / "RESULTS.md").read_text()
    assert "Longer than 3 s, so read in pieces" in md and "`long`: 1" in md


# ------------------------------------------------------------------------------------ long recordings
def test_windowed_offline_decode_equals_whole(env, capsys, tmp_path):
    """A 12 s recording at 44.1 kHz (so the blocks are resampled) with the window forced to 3 s: the
    same text as the whole-file decode, greedy and with the HLG graph; and with self-attention switched
    off (receptive field: CNN + positional conv, inside the window's context) the stitched scores equal
    the whole-file scores frame by frame."""
    root, lang, models = env
    wav = tmp_path / "talk.wav"
    sf.write(wav, _noise(12.0, 5, 44100), 44100)
    base = ["--model", models["offline"], "--lang-dir", lang, wav]
    small = ["--max-whole-seconds", 2, "--window-seconds", 3, "--window-overlap-seconds", 1]
    for graph in ([], ["--graph", root / "lang_test" / "HLG.fst"]):
        rc, whole, err = _transcribe(capsys, *base, *graph)
        assert rc == 0 and "note:" not in err, err
        rc, windowed, err = _transcribe(capsys, *base, *graph, *small)
        assert rc == 0, err
        assert "note: utterance 'talk' is 12.0 s long (> --max-whole-seconds 2): decoded in 3 s windows" in err
        assert windowed == whole and len(whole[0].split()) > 1

    from distill.decode.audio import AudioFile
    from distill.decode.long_audio import LongAudioOptions, windowed_scores
    from distill.models import load_pretrained

    model = load_pretrained(models["offline"]).eval()
    for layer in model.encoder.layers:  # no attention: each frame sees +-8 frames (positional conv) only
        torch.nn.init.zeros_(layer.attention.out_proj.weight)
    with AudioFile(str(wav)) as f, torch.no_grad():
        ref = model(torch.from_numpy(f.read_all())[None]).scores[0]
        fwd = lambda w: model(torch.from_numpy(w)[None]).scores[0]  # noqa: E731
        got = torch.cat(list(windowed_scores(f, fwd, model.config, LongAudioOptions(2, 3, 1))))
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["streaming-model", "--streaming"])
def test_streaming_long_input_in_bounded_memory(env, capsys, tmp_path, monkeypatch, mode):
    """3 minutes of audio through a streaming model trained with unbounded left context: the key/value
    cache never exceeds --max-whole-seconds of frames, the recogniser's audio buffer one block plus one
    chunk, and the file is read in blocks of at most 10 s, never whole."""
    from distill.decode.audio import AudioFile
    from distill.models.streaming import StreamingRecognizer

    root, lang, models = env
    wav = tmp_path / "meeting.wav"
    sf.write(wav, _noise(180.0, 3), 16000)
    seen = {"cache": 0, "buffer": 0, "read": 0}
    real_accept, real_read = StreamingRecognizer.accept_waveform, AudioFile.read

    def accept(self, samples):
        out = real_accept(self, samples)
        seen["cache"] = max(seen["cache"], self.cache_frames())
        seen["buffer"] = max(seen["buffer"], self.buffered_samples())
        return out

    def read(self, start, n):
        seen["read"] = max(seen["read"], n)
        return real_read(self, start, n)

    def read_all(self):
        raise AssertionError("the long recording was read whole")

    monkeypatch.setattr(StreamingRecognizer, "accept_waveform", accept)
    monkeypatch.setattr(AudioFile, "read", read)
    monkeypatch.setattr(AudioFile, "read_all", read_all)
    lat = tmp_path / "lat.json"
    extra = ["--streaming", "--chunk-frames", CHUNK, "--latency-json", lat] if mode == "--streaming" else []
    rc, out, err = _transcribe(
        capsys, "--model", models["streaming"], "--lang-dir", lang, wav, "--max-whole-seconds", 10, *extra
    )
    assert rc == 0, err
    assert out[0].startswith("meeting ") and len(out[0].split()) > 1
    bound = math.ceil(10 * 50 / CHUNK) * CHUNK  # 10 s of 20 ms frames, whole chunks
    assert 0 < seen["cache"] <= bound
    assert seen["buffer"] <= 10 * 16000 + CHUNK * 320 + 80
    assert 0 < seen["read"] <= 10 * 16000
    assert f"left context {bound // CHUNK} chunks of {CHUNK} frames" in err
    if mode == "--streaming":
        assert json.loads(lat.read_text())["utts"]["meeting"]["long_recording"] is True
