"""distill.bin.package_model: a shippable HF directory with tokens, training record and a measured WER."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from model_fixtures import tiny

from distill.bin import package_model
from distill.data.tokenizer import build_char_tokenizer, write_lang_files
from distill.models import W2V2Model, load_pretrained, save_pretrained
from distill.scoring import wer

TEXTS = ["MY DEAR SISTER", "THE FAMILY OF DASHWOOD", "HAD LONG BEEN SETTLED"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    tok = build_char_tokenizer(TEXTS)
    lang = tmp / "lang"
    write_lang_files(lang, tok, {w for t in TEXTS for w in t.split()})
    torch.manual_seed(0)
    model = W2V2Model(tiny(vocab_size=tok.vocab_size)).eval()
    save_pretrained(model, tmp / "exp" / "model")
    rows = [
        {"type": "train", "step": 10, "updates_per_s": 2.0},
        {"type": "valid", "step": 10, "wer": 90.0},
        {"type": "train", "step": 20, "updates_per_s": 1.0},
    ]
    (tmp / "exp" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "exp" / "train.yaml").write_text("task: teacher\n")
    test = tmp / "test"
    test.mkdir()
    rng = np.random.default_rng(0)
    scp, text = [], []
    for i, t in enumerate(TEXTS):
        sf.write(test / f"u{i}.wav", (0.1 * rng.standard_normal(16000 + 4000 * i)).astype(np.float32), 16000)
        scp.append(f"u{i} {test / f'u{i}.wav'}\n")
        text.append(f"u{i} {t}\n")
    (test / "wav.scp").write_text("".join(scp))
    (test / "text").write_text("".join(text))
    out = tmp / "shipped"
    rc = package_model.main(
        [
            "--model",
            str(tmp / "exp" / "model"),
            "--out",
            str(out),
            "--lang-dir",
            str(lang),
            "--train-dir",
            str(tmp / "exp"),
            "--test-dir",
            str(test),
            "--test-set",
            "demo-test",
            "--dtype",
            "float16",
            "--command",
            "python -m distill.bin.train --config conf/x.yaml",
        ]
    )
    assert rc == 0
    return tmp, model, out, test


def test_package_is_a_loadable_fp16_hf_directory(made):
    tmp, model, out, _ = made
    assert {
        "config.json",
        "model.safetensors",
        "tokens.txt",
        "train.yaml",
        "train_log.jsonl",
        "card.json",
        "README.md",
    } <= {p.name for p in out.iterdir()}
    # stored in float16, declared float32: transformers (dtype="auto") and load_pretrained compute in float32
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((out / "card.json").read_text())["dtype"] == "float16"
    full = (tmp / "exp" / "model" / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.55 * full
    back = load_pretrained(out)
    x = torch.randn(1, 16000)
    with torch.inference_mode():
        a, b = model(x).scores, back(x).scores
    assert (a - b).abs().max() < 0.05  # fp16 rounding of the weights only


def test_card_and_readme_state_the_measured_wer(made):
    _, _, out, test = made
    card = json.loads((out / "card.json").read_text())
    assert card["params"] == sum(p.numel() for p in load_pretrained(out).parameters())
    assert card["training"] == {"updates": 20, "train_hours": round((10 / 2.0 + 10 / 1.0) / 3600, 2)}
    hyp = subprocess.run(
        [sys.executable, "-m", "distill.bin.transcribe", "--model", str(out), "--wav-scp", str(test / "wav.scp")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    hyps = dict((ln.split(" ", 1) + [""])[:2] for ln in hyp.splitlines())
    refs = dict(ln.split(" ", 1) for ln in (test / "text").read_text().splitlines())
    assert card["test_wer"]["wer"] == pytest.approx(wer(refs, hyps)["wer"])
    assert card["test_wer"]["num_utts"] == 3
    readme = (out / "README.md").read_text()
    assert f"{card['test_wer']['wer']:.2f} %" in readme and "python -m distill.bin.train" in readme


def test_bad_inputs_are_named(made, tmp_path, capsys):
    tmp, _, _, test = made
    empty_lang = tmp_path / "lang"
    empty_lang.mkdir()
    args = ["--model", str(tmp / "exp" / "model"), "--out", str(tmp_path / "o")]
    assert package_model.main(args + ["--lang-dir", str(empty_lang)]) == 2
    assert "neither bpe.model nor tokens.txt" in capsys.readouterr().err
    other = tmp_path / "lang2"
    write_lang_files(other, build_char_tokenizer(["XYZ"]), {"XYZ"})
    assert package_model.main(args + ["--lang-dir", str(other)]) == 2
    assert "outputs but" in capsys.readouterr().err
    assert package_model.main(args + ["--lang-dir", str(tmp / "lang"), "--test-dir", str(tmp_path)]) == 2
    assert "has no wav.scp" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()
