"""Package a trained model for shipping: a Hugging Face wav2vec 2.0 directory with its tokens, training
record and a measured test WER (what ``python -m distill.bin.package_model`` runs).

The output directory holds ``config.json`` + ``model.safetensors`` (``dtype``: float32 by default;
float16 halves the size, and both this toolkit and transformers load it back as float32),
``bpe.model``/``tokens.txt`` of the lang dir (so ``distill.bin.transcribe --model OUT`` needs nothing
else), ``train.yaml``, ``train_log.jsonl`` and ``train.log`` from the training dir, ``card.json``
(parameters, size, dtype, input scaling, the command, training time and updates, greedy test WER) and
a ``README.md`` that states the same numbers.

The package is a plain transformers model: ``pipeline("automatic-speech-recognition", model=OUT)`` and
``Wav2Vec2Processor`` + ``Wav2Vec2ForCTC`` give the greedy text of ``transcribe``. For that, the
tokenizer files (:func:`~distill.models.hf_format.write_hf_tokenizer`) decode as we do, and the input
scaling is one HF applies: "utterance" is the feature extractor's ``do_normalize`` (same formula and
epsilon), "fixed" is folded into the first convolution (:func:`~distill.models.hf_format.fold_fixed_wave_norm`).
A streaming student (chunked attention, causal positional convolution, "running" scaling, Fbank
front-end) is refused: transformers would run it full-context, with another output; ship it with
``python -m distill.bin.export`` (ONNX) instead.

The WER is measured on the *packaged* weights through the user's path: the ``distill.bin.transcribe``
command (greedy CTC, run as a subprocess) on ``<test-dir>/wav.scp``, scored with
:func:`distill.scoring.wer` against ``<test-dir>/text``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from distill.data.tokenizer import TOKEN_FILES, Tokenizer, check_same_tokens, copy_token_files
from distill.scoring import wer
from distill.scoring.report import read_kaldi_text

from .checkpoint import load_pretrained, save_pretrained
from .hf_format import fold_fixed_wave_norm, hf_incompatibility, write_hf_tokenizer

__all__ = ["DTYPES", "TRAIN_FILES", "PackageError", "greedy_test_wer", "package"]

DTYPES = ("float32", "float16", "bfloat16")
TRAIN_FILES = ("train.yaml", "train_log.jsonl", "train.log")


class PackageError(ValueError):
    """Bad input to the packager, with the offending path in the message."""


def greedy_test_wer(model_dir: Path, test_dir: Path, num_threads: int = 0) -> dict[str, Any]:
    """Greedy WER (sclite counts) of ``model_dir`` on a Kaldi test dir, via the transcribe CLI."""
    scp, text = test_dir / "wav.scp", test_dir / "text"
    for f in (scp, text):
        if not f.is_file():
            raise PackageError(f"test dir '{test_dir}' has no {f.name}")
    cmd = [
        sys.executable,
        "-m",
        "distill.bin.transcribe",
        "--model",
        str(model_dir),
        "--wav-scp",
        str(scp),
        "--batch-size",
        "8",
        "--num-threads",
        str(num_threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackageError(f"transcribing '{scp}' failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    hyps = {}
    for line in proc.stdout.splitlines():
        utt, _, words = line.partition(" ")
        hyps[utt] = words
    res = wer(read_kaldi_text(text), hyps)
    return {k: res[k] for k in ("wer", "num_errs", "ref_words", "sub", "ins", "del", "num_utts")}


def _train_summary(train_dir: Path) -> dict[str, Any]:
    """Updates and training hours of a run from its ``train_log.jsonl`` (one JSON object per log line).

    Hours add up each logged interval's updates over its measured rate, so time between a kill and
    the resume does not count (validation does not either)."""
    log_file = train_dir / "train_log.jsonl"
    if not log_file.is_file():
        return {}
    rows = []
    for n, line in enumerate(log_file.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise PackageError(f"{log_file}:{n}: not JSON: {e}") from None
    train = [r for r in rows if r.get("type") == "train" and isinstance(r.get("step"), int)]
    if not train:
        return {}
    seconds, prev = 0.0, 0
    for r in train:
        if r["step"] > prev and r.get("updates_per_s"):
            seconds += (r["step"] - prev) / r["updates_per_s"]
        prev = r["step"]
    return {"updates": max(r["step"] for r in train), "train_hours": round(seconds / 3600, 2)}


def _input_scaling(cfg: Any) -> str:
    """How the package's input scaling reaches transformers, for the card."""
    if cfg.wave_norm == "fixed":
        return f"fixed (x - {cfg.wave_mean:.6g}) / {cfg.wave_std:.6g}, folded into the first convolution"
    if cfg.wave_norm == "utterance":
        return "per utterance (preprocessor_config.json do_normalize: true)"
    return "none"


def _readme(card: dict[str, Any]) -> str:
    w = card.get("test_wer")
    wer_line = (
        f"- **test WER (greedy CTC, no LM): {w['wer']:.2f} %** ({w['num_errs']} errors / "
        f"{w['ref_words']} words, {w['num_utts']} utterances of `{card['test_set']}`)"
        if w
        else "- test WER: not measured"
    )
    lines = [
        f"# {card['name']}",
        "",
        card.get("description", "").strip(),
        "",
        f"- wav2vec 2.0 CTC model in Hugging Face format: `config.json` + `model.safetensors` ({card['dtype']}, "
        f"{card['size_mb']:.1f} MB), {card['params']:,} parameters; tokens: {', '.join(card['token_files'])}",
        f"- input: 16 kHz mono waveform; scaling: {card['input_scaling']}",
        wer_line,
        "",
        "In transformers (greedy CTC, the same text as `python -m distill.bin.transcribe --model <dir>`):",
        "",
        "```python",
        "from transformers import pipeline",
        'asr = pipeline("automatic-speech-recognition", model="<dir>")',
        'print(asr("audio.wav")["text"])',
        "```",
    ]
    if card.get("training"):
        t = card["training"]
        lines.append(
            f"- training: {t.get('updates', '?')} updates, {t.get('train_hours', '?')} h of training "
            f"(`train_log.jsonl`, `train.log`; config `train.yaml`)"
        )
    lines += ["", "Made with:", "", "```sh", card["command"].strip(), "```", ""]
    return "\n".join(lines)


def package(
    model: Path,
    out: Path,
    lang_dir: Path,
    dtype: str = "float32",
    train_dir: Path | None = None,
    test_dir: Path | None = None,
    command: str = "",
    name: str = "",
    description: str = "",
    test_set: str = "",
) -> dict[str, Any]:
    """Write the package (see the module docstring) and return its card."""
    if dtype not in DTYPES:
        raise PackageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    tokens = [f for f in TOKEN_FILES if (lang_dir / f).is_file()]
    if not tokens:
        raise PackageError(f"lang dir '{lang_dir}' has neither {' nor '.join(TOKEN_FILES)}")
    m = load_pretrained(model)
    why = hf_incompatibility(m.config)
    if why:
        raise PackageError(
            f"'{model}' is a streaming model: {'; '.join(why)}. transformers' Wav2Vec2ForCTC would run it "
            "full-context and give another output, so it is not packaged as one; export it for streaming "
            "with python -m distill.bin.export (ONNX, state in/state out)"
        )
    check_same_tokens(
        model, "model", lang_dir, "lang dir", a_size=m.config.vocab_size, b_size=Tokenizer.load(lang_dir).vocab_size
    )
    if test_dir is not None and not all((test_dir / f).is_file() for f in ("wav.scp", "text")):
        raise PackageError(f"test dir '{test_dir}' has no wav.scp or no text")
    final, out = out, out.with_name(out.name + ".partial")  # `final` appears only when complete
    if out.exists():
        shutil.rmtree(out)
    scaling = _input_scaling(m.config)
    save_pretrained(fold_fixed_wave_norm(m), out, dtype=getattr(torch, dtype))
    copy_token_files(lang_dir, out)
    write_hf_tokenizer(Tokenizer.load(lang_dir).pieces, out)
    if train_dir is not None:
        for f in TRAIN_FILES:
            if (train_dir / f).is_file():
                shutil.copy2(train_dir / f, out / f)
    card: dict[str, Any] = {
        "name": name or final.name,
        "description": description,
        "params": sum(p.numel() for p in m.parameters()),
        "dtype": dtype,
        "input_scaling": scaling,
        "size_mb": round((out / "model.safetensors").stat().st_size / 2**20, 2),
        "token_files": tokens,
        "command": command,
        "test_set": test_set or (str(test_dir) if test_dir else ""),
        "training": _train_summary(train_dir) if train_dir is not None else {},
    }
    if test_dir is not None:
        card["test_wer"] = greedy_test_wer(out, test_dir)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(_readme(card))
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    return card
