"""Stage 6 (``distill.bin.decode``) end to end on CPU: a tiny char lang dir with two test sets (one
utterance's audio unreadable), HLG/HP graphs from ``build_decode_graph``, tiny random-weight teacher,
student and streaming student in Hugging Face format, every form (fp32, int8, ONNX, ONNX int8), a
missing model; RESULTS.md / results.json / scoring files / plots checked against each other and against
an independent greedy + jiwer computation.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
import torch
import yaml

from distill.bin import build_decode_graph, decode
from distill.data.tokenizer import Tokenizer
from distill.decode.greedy import ctc_greedy
from distill.models import load_pretrained, save_pretrained
from distill.models.config import W2V2Config
from distill.models.wav2vec2 import W2V2Model
from tests.test_train_stages import STUDENT_ARCH, TEACHER_ARCH, TEXTS, _tone, make_lang

TEST_SETS = {
    "test-a": ["THE CAT SAT", "A DOG RAN", "THE RAT", "CAT RAN"],
    "test-b": ["A CAT SAT", "THE DOG", "DOG SAT", "A RAT RAN"],
}
BROKEN = "test-b-002"  # its audio file is not audio
PNG = b"\x89PNG\r\n\x1a\n"


def _write_test_cuts(root: Path, lang: Path) -> None:
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    index = yaml.safe_load((lang / "cuts.yaml").read_text())
    index["test"] = {}
    for part, texts in TEST_SETS.items():
        recs, sups = [], []
        for i, text in enumerate(texts):
            uid = f"{part}-{i:03d}"
            p = root / "wav" / f"{uid}.wav"
            sf.write(p, _tone(text, 500 + i), 16000)
            recs.append(Recording.from_file(p, recording_id=uid))
            sups.append(SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=recs[-1].duration, text=text))
        cuts = CutSet.from_manifests(RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups))
        CutSet.from_cuts(c.with_id(c.supervisions[0].id) for c in cuts).to_file(lang / f"cuts_test_{part}.jsonl.gz")
        index["test"][part] = f"cuts_test_{part}.jsonl.gz"
    (lang / "cuts.yaml").write_text(yaml.safe_dump(index))
    (root / "wav" / f"{BROKEN}.wav").write_bytes(b"this is not a wav file" * 100)  # after the manifest


def _model(arch: dict, vocab: int, seed: int, chunk: int = 0) -> W2V2Model:
    torch.manual_seed(seed)
    cfg = W2V2Config(vocab_size=vocab, **{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})
    m = W2V2Model(cfg).eval()
    if chunk:
        m.set_streaming(chunk, None)
    return m


def _train_log(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [
        {"type": "train", "step": s, "epoch": 0, "loss": 5.0 / s, "hid": 1.0 / s, "lr": 1e-3, "time": 1e9 + s}
        for s in range(1, n + 1)
    ]
    recs.append({"type": "valid", "step": n, "epoch": 0, "loss": 4.0, "wer": 90.0, "best": True, "time": 1e9})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + "garbage line\n")


ROWS = [
    {"name": "teacher", "path": "exp/teacher/model"},
    {"name": "student", "path": "exp/stage1/model"},
    {"name": "student-labels-only", "path": "exp/stage1_labels_only/model"},  # not trained
    {"name": "streaming", "path": "exp/stage2/model", "chunks": [8, 16]},
    {"name": "student-int8", "path": "exp/stage1/model", "form": "int8"},
    {"name": "student-onnx", "path": "exp/stage1/model", "form": "onnx"},
    {"name": "streaming-int8-onnx", "path": "exp/stage2/model", "form": "onnx-int8"},
    {"name": "student-fbank-onnx", "path": "exp/stage1_fbank/model", "form": "onnx"},  # input distillation
]
EXPECTED = [
    "teacher",
    "student",
    "student-labels-only",
    "streaming-160ms",
    "streaming-320ms",
    "student-int8",
    "student-onnx",
    "streaming-int8-onnx",
    "student-fbank-onnx",
]


@pytest.fixture(scope="module")
def stage6(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage6")
    lang = make_lang(root)
    (lang / "train_text.txt").write_text("".join(t + "\n" for t in TEXTS))
    _write_test_cuts(root, lang)
    rc = build_decode_graph.main([f"lang_dir={lang}", f"out_dir={root / 'lang_test'}", "lm_order=2"])
    assert rc == 0
    vocab = Tokenizer.load(lang).vocab_size
    exp = root / "exp"
    save_pretrained(_model(TEACHER_ARCH, vocab, 0), exp / "teacher" / "model")
    save_pretrained(_model(STUDENT_ARCH, vocab, 1), exp / "stage1" / "model")
    save_pretrained(_model(STUDENT_ARCH, vocab, 2, chunk=16), exp / "stage2" / "model")
    fbank = dict(STUDENT_ARCH, frontend="fbank", fbank_channels=8)
    save_pretrained(_model(fbank, vocab, 3), exp / "stage1_fbank" / "model")
    _train_log(exp / "teacher" / "train_log.jsonl", 10)
    _train_log(exp / "stage1" / "train_log.jsonl", 6)
    cfg = {
        "lang_dir": str(lang),
        "graph_dir": str(root / "lang_test"),
        "exp_root": str(exp),
        "out_dir": str(exp / "decode"),
        "methods": ["greedy", "hlg", "hp"],
        "beam": 8.0,
        "max_active": 200,
        "scoring_mode": "levenshtein",
        "speed_max_utts": 3,
        "piece_ms": 60.0,
        "models": [dict(r, path=str(root / r["path"])) for r in ROWS],
    }
    conf = root / "decode.yaml"
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root, lang, conf


@pytest.fixture(scope="module")
def ran(stage6):
    import io
    from contextlib import redirect_stdout

    root, lang, conf = stage6
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = decode.main(["--config", str(conf)])
    assert rc == 0
    return root, lang, conf, buf.getvalue()


def _table(md: str, section: str) -> dict[str, list[str]]:
    part = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for ln in part.splitlines():
        if ln.startswith("| ") and not ln.startswith("| model") and not ln.startswith("| ---"):
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _wer_from_errs(path: Path) -> float:
    return float(re.match(r"%WER = ([0-9.]+)", path.read_text()).group(1))


def _wer_summary(path: Path) -> dict[str, float]:
    lines = path.read_text().splitlines()
    assert lines[0] == "settings\tWER"
    return {k: float(v) for k, v in (ln.split("\t") for ln in lines[1:])}


def test_results_tables_json_and_files_agree(ran):
    root, lang, conf, stdout = ran
    exp = root / "exp"
    md = (exp / "RESULTS.md").read_text()
    data = json.loads((exp / "results.json").read_text())
    assert [r["name"] for r in data] == EXPECTED
    by = {r["name"]: r for r in data}
    assert by["student-labels-only"]["status"] == "not trained"
    for ts in TEST_SETS:
        table = _table(md, ts)
        assert list(table) == EXPECTED, ts
        assert table["student-labels-only"][1] == "not trained"
        assert table["teacher"][-1] == "(teacher)"
        for name in EXPECTED:
            r = by[name]
            if r["status"] != "ok":
                continue
            cells = table[name]
            assert cells[5] == f"{r['wer'][ts]:.2f}"  # RESULTS.md = results.json
            assert cells[3] == f"{r['rtf']:.4f}" and cells[2] == f"{r['size_mb']:.3f}"  # < 1 MB: 3 decimals
            assert r["wer"][ts] == r["wer_by_method"][ts]["hlg"]  # primary method: HLG
            d = Path(r["decode_dir"])
            assert d == exp / "decode" / name
            summary = _wer_summary(d / f"wer-summary-{ts}-all.txt")
            for m in ("greedy", "hlg", "hp"):
                w = pytest.approx(r["wer_by_method"][ts][m], abs=0.006)
                assert _wer_from_errs(d / f"errs-{ts}-{m}.txt") == w
                assert _wer_summary(d / f"wer-summary-{ts}-{m}.txt") == {m: w}
                assert summary[m] == w
                assert (d / f"recogs-{ts}-{m}.txt").is_file()
            tw = by["teacher"]["wer"][ts]
            if name != "teacher" and tw:
                assert cells[6] == f"{100 * (r['wer'][ts] - tw) / tw:+.1f}%"
    # row fields
    for name, r in by.items():
        if r["status"] != "ok":
            continue
        assert r["params"] > 0 and r["size_mb"] > 0 and r["rtf"] > 0, name
        assert r["speed"]["threads"] == 1 and r["speed"]["utts"] == 3
    assert by["teacher"]["latency_ms"] is None and by["student-int8"]["latency_ms"] is None
    assert by["streaming-160ms"]["latency_ms"] == 160 and by["streaming-320ms"]["latency_ms"] == 320
    assert by["streaming-int8-onnx"]["latency_ms"] == 320  # the model's own chunk (16 frames)
    assert by["teacher"]["params"] > by["student"]["params"] == by["student-int8"]["params"]
    # the size of the form actually used
    for name, f in (
        ("student", "stage1/model/model.safetensors"),
        ("student-int8", "decode/student-int8/model_int8.pt"),
        ("student-onnx", "decode/student-onnx/model.onnx"),
    ):
        assert by[name]["size_mb"] == pytest.approx((exp / f).stat().st_size / 2**20, abs=1e-3)
    assert (exp / "decode/streaming-int8-onnx/model.int8.onnx").is_file()
    assert (exp / "decode/streaming-int8-onnx/step-c16.int8.onnx").is_file()
    # the ONNX fp32 form computes what torch fp32 computes
    assert by["student-onnx"]["wer_by_method"] == by["student"]["wer_by_method"]
    # streaming: the chunk-masked batch forward used for WER equals the streaming recogniser
    for name in ("streaming-160ms", "streaming-320ms"):
        s = by[name]["streaming"]
        assert s["same_greedy_as_batch"] == "3/3"
        assert s["chunk_compute_ms"]["mean"] > 0 and s["num_chunks"] > 0
        assert s["first_token_ms"]["mean"] is None or s["first_token_ms"]["mean"] > 0
    assert "## Streaming: measured compute and latency" in md and "| streaming-160ms | 160 ms |" in md
    assert "8x faster" in md and "12x smaller" in md  # the paper's headline figures
    # stdout: the tables and the plot paths
    assert "## test-a" in stdout and str(exp / "RESULTS.md") in stdout and "training_curves" in stdout


def test_wer_equals_independent_greedy_and_jiwer(ran):
    """The student's greedy WER recomputed from scratch: forward, argmax collapse, jiwer; the unreadable
    utterance is an empty hypothesis (all deletions)."""
    root, lang, conf, _ = ran
    data = {r["name"]: r for r in json.loads((root / "exp" / "results.json").read_text())}
    tok = Tokenizer.load(lang)
    for name, path, chunk in (("student", "stage1", 0), ("streaming-160ms", "stage2", 8)):
        model = load_pretrained(root / "exp" / path / "model").eval()
        if chunk:
            model.set_streaming(chunk, None)
        for ts, texts in TEST_SETS.items():
            refs, hyps = [], []
            for i, text in enumerate(texts):
                uid = f"{ts}-{i:03d}"
                refs.append(text)
                if uid == BROKEN:
                    hyps.append("")
                    continue
                wave, sr = sf.read(root / "wav" / f"{uid}.wav", dtype="float32")
                with torch.no_grad():
                    out = model(torch.from_numpy(wave)[None])
                hyps.append(tok.decode(ctc_greedy(out.scores, out.lengths)[0]))
            out = jiwer.process_words(refs, [h if h else "" for h in hyps])
            errs = out.substitutions + out.deletions + out.insertions
            expect = 100 * errs / sum(len(r.split()) for r in refs)
            assert data[name]["wer_by_method"][ts]["greedy"] == pytest.approx(expect, abs=0.006), (name, ts)


def test_unreadable_audio_is_all_deletions_and_listed(ran):
    root, lang, conf, _ = ran
    exp = root / "exp"
    md = (exp / "RESULTS.md").read_text()
    for r in json.loads((exp / "results.json").read_text()):
        if r["status"] == "ok":
            assert r["failed_utts"] == {"test-b": [BROKEN]}
            assert r["errors"]["test-b"]["greedy"]["num_utts"] == 4
    assert f"`test-b` / `{BROKEN}`" in md
    for m in ("greedy", "hlg"):
        errs = (exp / "decode" / "student" / f"errs-test-b-{m}.txt").read_text()
        assert errs.rstrip().endswith(f"MISSING HYPOTHESES (scored as all deletions): 1\n{BROKEN}")
        assert f"{BROKEN}:\t(DOG SAT->*)" in errs  # both reference words deleted
    bullet, after = md.split(f"- `test-b` / `{BROKEN}`: ", 1)[1].split("\n", 2)[:2]
    assert "Format not recognised" in bullet and after == ""  # the loader's reason, on one line


def test_plots_are_pngs(ran):
    root = ran[0]
    exp = root / "exp"
    for name in (
        "wer_vs_latency_test-a.png",
        "wer_vs_latency_test-b.png",
        "wer_vs_size_test-a.png",
        "wer_vs_size_test-b.png",
        "training_curves.png",
    ):
        p = exp / name
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 2000, name


def _lang_copy_with(stage6, tmp_path, text: bytes, part: str = "test-a") -> Path:
    """A copy of the lang dir whose test part's first reference is replaced by raw ``text`` bytes."""
    import shutil

    root, lang, conf = stage6
    new = tmp_path / "lang"
    shutil.copytree(lang, new)
    path = new / f"cuts_test_{part}.jsonl.gz"
    lines = gzip.open(path, "rb").read().splitlines()
    lines[0] = lines[0].replace(b'"text": "THE CAT SAT"', b'"text": "' + text + b'"')
    assert lines[0] != gzip.open(path, "rb").read().splitlines()[0]
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return new


@pytest.mark.parametrize("text,msg", [(b"", "empty reference"), (b"THE \xff\xfe CAT", "not valid UTF-8")])
def test_bad_reference_stops_before_decoding(stage6, tmp_path, capsys, text, msg):
    root, lang, conf = stage6
    new = _lang_copy_with(stage6, tmp_path, text)
    rc = decode.main(
        ["--config", str(conf), f"lang_dir={new}", f"out_dir={tmp_path / 'dec'}", f"exp_root={tmp_path / 'exp'}"]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert msg in err and "test-a-000" in err and "test-a" in err
    assert not (tmp_path / "exp" / "RESULTS.md").exists()


def test_config_errors(stage6, tmp_path, capsys):
    root, lang, conf = stage6
    with pytest.raises(SystemExit) as e:
        decode.main(["--config", str(conf), "methods=[greedy, beam]"])
    assert e.value.code == 2
    rows = "[{name: a, path: x}, {name: a, path: y}]"
    for bad in ([f"models={rows}"], ["methods=[greedy]", "primary_method=hlg"]):
        with pytest.raises(SystemExit) as e:
            decode.main(["--config", str(conf), *bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"{conf} (with command-line overrides): key '" in err  # the file and the key
    with pytest.raises(SystemExit):
        decode.main(["--config", str(conf), f"models={rows}"])
    assert "result row 'a'" in capsys.readouterr().err
    # a missing graph is an input error naming the file and the command that builds it
    rc = decode.main(
        [
            "--config",
            str(conf),
            f"graph_dir={tmp_path / 'none'}",
            f"out_dir={tmp_path / 'd'}",
            f"exp_root={tmp_path / 'e'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "HLG.fst" in err and "build_decode_graph" in err


def test_recipe_decode_configs_validate(repo_root, tmp_path):
    from distill.config import load_config, read_config
    from distill.decode.config import DecodeConfig, check_config, row_names

    for corpus in ("librispeech", "gigaspeech", "inhouse"):
        for sub in ("", "tiny/"):
            path = repo_root / "egs" / corpus / "conf" / f"{sub}decode.yaml"
            cfg = load_config(DecodeConfig, path, [f"lang_dir={tmp_path}"])  # the recipe's data/lang is not here
            check_config(cfg)
            names = [n for r in cfg.models for n in row_names(r)]
            for word in ("teacher", "student", "streaming", "int8"):
                assert any(word in n for n in names), (path, word)
            assert cfg.primary_method in (None, "hlg") and "hlg" in cfg.methods
            # model paths are the exp_dir/model of the recipe's training configs (tiny: or of the full ones,
            # a row that the tiny run does not train is reported as "not trained")
            confs = [*path.parent.glob("*.yaml"), *(path.parent.parent.glob("*.yaml") if sub else [])]
            train_dirs = {read_config(p).get("exp_dir") for p in confs}
            for r in cfg.models:
                assert str(Path(r.path).parent) in train_dirs, (path, r.path)


@pytest.mark.gpu
def test_wer_pass_on_cuda(stage6, ran, tmp_path):
    """device=cuda: the fp32 rows run on the GPU, the int8/ONNX rows on the CPU (identical to the CPU run)."""
    root, lang, conf = stage6
    rc = decode.main(["--config", str(conf), "device=cuda", f"out_dir={tmp_path / 'dec'}", f"exp_root={tmp_path}"])
    assert rc == 0
    gpu = {r["name"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    cpu = {r["name"]: r for r in json.loads((root / "exp" / "results.json").read_text())}
    assert list(gpu) == EXPECTED and "WER pass on `cuda`" in (tmp_path / "RESULTS.md").read_text()
    for name in ("student-int8", "student-onnx", "streaming-int8-onnx"):
        assert gpu[name]["wer_by_method"] == cpu[name]["wer_by_method"]
    for name in ("teacher", "student", "streaming-160ms"):
        assert gpu[name]["errors"]["test-a"]["greedy"]["num_utts"] == 4 and gpu[name]["rtf"] > 0
