"""Fault injection, resources, through the training entry point (``distill.bin.train.main``, tiny teacher of
egs/inhouse/conf/tiny, in-process so that the fault can be injected):

* the disk fills up while a checkpoint is written (ENOSPC) -> a clear error naming the file, the previous
  checkpoint intact and still the newest, nothing partial left; after space is freed the run resumes and
  ends with the parameters of an uninterrupted run;
* one batch's loss is NaN -> that batch is skipped, logged with its utterance ids, and counted
  (``skipped_nonfinite`` in train_log.jsonl, kept across checkpoints); training finishes;
* CUDA only: a batch too large for the (capped) GPU memory -> skipped as out of memory and logged.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import test_train_stages as stages  # noqa: E402  (tests/ is on sys.path under pytest)
import torch

from distill.bin import train as train_cli
from distill.train import checkpoint as ck

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = REPO / "egs/inhouse/conf/tiny/teacher.yaml"


@pytest.fixture(scope="module")
def lang(tmp_path_factory) -> Path:
    return stages.make_lang(tmp_path_factory.mktemp("faults_resources"))


def train(lang: Path, exp: Path, *extra: str) -> int:
    """``python -m distill.bin.train`` in-process; returns the exit status."""
    argv = [
        "--config",
        str(TINY_TEACHER),
        f"lang_dir={lang}",
        f"exp_dir={exp}",
        "train.max_steps=6",
        "train.checkpoint_interval=2",
        "train.log_interval=1",
        "train.progress=false",
        "data.max_duration=2.5",
        "data.valid_max_batches=1",
        *extra,
    ]
    with pytest.raises(SystemExit) as e:
        train_cli.main(argv)
    return e.value.code


def records(exp: Path) -> list[dict]:
    return [json.loads(x) for x in (exp / "train_log.jsonl").read_text().splitlines()]


def test_enospc_in_checkpoint_write(lang: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    exp = tmp_path / "exp"
    real = ck._write

    def disk_full_at_4(obj, f):
        if obj.get("format") == ck.CKPT_FORMAT and obj["trainer"]["step"] == 4:
            f.write(b"PK\x03\x04 the first bytes of a zip")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(ck, "_write", disk_full_at_4)
    assert train(lang, exp) == 1
    err = capsys.readouterr().err
    target = ck.checkpoint_path(exp / "checkpoints", 4)
    prev = ck.checkpoint_path(exp / "checkpoints", 2)
    assert (
        f"error: could not write '{target}': no space left on device (no previous file existed; nothing "
        f"partial was left behind); the newest complete checkpoint is {prev}" in err
    ), err[-2000:]
    assert "Traceback" not in err
    names = sorted(p.name for p in (exp / "checkpoints").iterdir())
    assert names == ["ckpt-00000002.pt"], names
    found = ck.latest_valid_checkpoint(exp / "checkpoints")
    assert found is not None and found[1]["trainer"]["step"] == 2
    assert not (exp / "model").exists() and not (exp / "last.pt").exists()

    monkeypatch.setattr(ck, "_write", real)  # space freed: the same command resumes and finishes
    assert train(lang, exp) == 0
    assert "resumed from" in (exp / "train.log").read_text()
    assert train(lang, tmp_path / "reference") == 0
    a, b = ck.load_model_state(exp / "last.pt"), ck.load_model_state(tmp_path / "reference" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_batch_is_skipped_and_counted(lang: Path, tmp_path: Path, monkeypatch) -> None:
    from distill.train import tasks

    real = tasks.compute_loss
    calls = {"n": 0}

    def nan_on_third_batch(model, batch):
        calls["n"] += 1
        res = real(model, batch)
        if calls["n"] == 3:
            res.loss = res.loss * float("nan")
        return res

    monkeypatch.setattr(tasks, "compute_loss", nan_on_third_batch)
    exp = tmp_path / "exp"
    assert train(lang, exp) == 0
    recs = [r for r in records(exp) if r["type"] == "train"]
    assert max(r["step"] for r in recs) == 6  # the skipped batch made no update; six were made anyway
    assert recs[-1]["skipped_nonfinite"] == 1 and recs[-1]["skipped_oom"] == 0
    assert [r["skipped_nonfinite"] for r in recs if r["step"] < 2] == [0]
    log = (exp / "train.log").read_text()
    assert "non-finite loss (loss=nan); batch skipped [" in log and "cut_ids ['train-" in log
    assert "skipped 1 non-finite and 0 OOM batches" in log
    last = ck.load(ck.list_checkpoints(exp / "checkpoints")[-1][1])
    assert last["trainer"]["n_nonfinite"] == 1  # the count survives a resume
    assert all(torch.isfinite(v).all() for v in ck.load_model_state(exp / "last.pt").values())


@pytest.mark.gpu
def test_cuda_oom_batch_is_skipped_and_logged(lang: Path, tmp_path: Path) -> None:
    """One 240 s utterance among the short ones, one utterance per batch, and the CUDA caching allocator
    capped at 128 MB: the long utterance's batch (the first CNN layer's output alone is 98 MB, and its
    normalised and activated copies are kept for the backward pass) runs out of memory, is skipped and
    logged naming it; the short batches (a few MB each) train. An epoch is 8 short batches and the long
    one, so update 9 comes after at least one out-of-memory batch."""
    import shutil

    from lhotse import CutSet, Recording, SupervisionSegment

    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, (0.1 * np.random.default_rng(0).standard_normal(240 * 16000)).astype(np.float32), 16000)
    rec = Recording.from_file(long_wav, recording_id="long")
    cut = rec.to_cut().with_id("long")
    cut.supervisions = [
        SupervisionSegment(id="long", recording_id="long", start=0.0, duration=rec.duration, text="A CAT")
    ]
    mylang = tmp_path / "lang"
    shutil.copytree(lang, mylang)
    cuts = [*CutSet.from_file(mylang / "cuts_train.jsonl.gz"), cut]  # read all before rewriting the file
    CutSet.from_cuts(cuts).to_file(mylang / "cuts_train.jsonl.gz")
    exp = tmp_path / "exp"
    torch.cuda.set_per_process_memory_fraction(128 * 2**20 / torch.cuda.get_device_properties(0).total_memory, 0)
    try:
        code = train(mylang, exp, "device=cuda", "data.max_duration=250", "data.max_cuts=1", "train.max_steps=9")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert code == 0
    recs = [r for r in records(exp) if r["type"] == "train"]
    assert max(r["step"] for r in recs) == 9 and recs[-1]["skipped_oom"] >= 1
    log = (exp / "train.log").read_text()
    assert "out of memory" in log and "cut_ids ['long']" in log
