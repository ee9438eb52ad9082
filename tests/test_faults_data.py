"""Fault injection, data: a Kaldi corpus full of bad items goes through the inhouse recipe's run.sh
(stages 0-3 with conf/tiny), and no transcript or file name ever reaches a shell.

The corpus is the tiny demo corpus plus, in ``train``: a truncated WAV, a 0-byte WAV, a text file named
``.wav``, an 8 kHz WAV, a stereo WAV, a 30-minute FLAC, a punctuation-only transcript, a repeated
utterance id, files *named* with shell metacharacters (a ``.wav`` and a NIST ``.sph``, which lhotse's
default backend would hand to a shell), a transcript and an utterance id full of ``$( )``, backticks and
``; rm``, and a ``cmd |`` pipe entry (the one kind of shell command the toolkit runs on data, on purpose).
Stages 0-1 must finish with every bad item counted under its reason in ``summary.json``, stage 3 must
train on the rest, and only the pipe's marker file may appear.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from distill.data import report as R

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

# file names and texts that would run `touch <MARK>` if any of them reached a shell
EVIL_WAV = "evil $(touch MARK_NAME1) `touch MARK_NAME2`; touch MARK_NAME3 'q.wav"
EVIL_SPH = "evil;touch MARK_SPH;.sph"
EVIL_TEXT = "I DO NOT CARE $(touch MARK_TEXT1) `touch MARK_TEXT2` ; rm -rf KEEP_ME ; touch MARK_TEXT3"
EVIL_ID = "2001-evil-$(touch${IFS}MARK_ID)"
LONG_SECONDS = 30 * 60


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["VIRTUAL_ENV"] = sys.prefix
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _write_long_flac(path: Path, seconds: int) -> None:
    """A long, mostly silent FLAC written block by block (small on disk, 1800 s long)."""
    sr, block = 16000, 16000 * 60
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", sr, 1, format="FLAC", subtype="PCM_16") as f:
        for i in range(seconds // 60):
            x = np.zeros(block, dtype=np.float32)
            if i == 0:
                x[:16000] = 0.1 * rng.standard_normal(16000)
            f.write(x)


def add_faults(train: Path, work: Path) -> dict[str, tuple[str, str]]:
    """Add the bad items to the Kaldi dir ``train``; returns ``utt id -> (stage, reason)`` (stage 0/1,
    reason from distill.data.report; ``note:`` reasons are kept, not dropped)."""
    wav_lines = (train / "wav.scp").read_text().splitlines()
    text_lines = (train / "text").read_text().splitlines()
    spk_lines = (train / "utt2spk").read_text().splitlines()
    # the longest utterance: its audio also fits the long metacharacter transcript as a CTC path
    srcs = dict(x.split(maxsplit=1) for x in wav_lines)
    good_id = max(srcs, key=lambda u: Path(srcs[u]).stat().st_size)
    good_path = srcs[good_id]
    good_text = dict(x.split(maxsplit=1) for x in text_lines)[good_id]
    audio, sr = sf.read(good_path, dtype="float32")
    d = work / "faults"
    d.mkdir()
    expected: dict[str, tuple[str, str]] = {}
    files: dict[str, tuple[str, str]] = {}  # utt -> (wav.scp value, transcript)

    raw = Path(good_path).read_bytes()
    (d / "truncated.wav").write_bytes(raw[: len(raw) // 2])
    files["9001-flt-truncated"] = (str(d / "truncated.wav"), good_text)
    expected["9001-flt-truncated"] = ("0", R.TRUNCATED_AUDIO)
    (d / "empty.wav").write_bytes(b"")
    files["9001-flt-empty"] = (str(d / "empty.wav"), good_text)
    expected["9001-flt-empty"] = ("0", R.EMPTY_FILE)
    (d / "notaudio.wav").write_text("this is a text file, not audio\n" * 20)
    files["9001-flt-notaudio"] = (str(d / "notaudio.wav"), good_text)
    expected["9001-flt-notaudio"] = ("0", R.UNREADABLE_AUDIO)
    from distill.data.audio import resample

    sf.write(d / "8k.wav", resample(audio, sr, 8000), 8000)
    files["9001-flt-8k"] = (str(d / "8k.wav"), good_text)
    expected["9001-flt-8k"] = ("0", "note:" + R.NOTE_RESAMPLED)
    sf.write(d / "stereo.wav", np.stack([audio, 0.5 * audio], axis=1), sr)
    files["9001-flt-stereo"] = (str(d / "stereo.wav"), good_text)
    expected["9001-flt-stereo"] = ("0", "note:" + R.NOTE_DOWNMIXED)
    _write_long_flac(d / "long.flac", LONG_SECONDS)
    files["9001-flt-long"] = (str(d / "long.flac"), good_text)
    expected["9001-flt-long"] = ("1", R.TOO_LONG)
    files["9001-flt-punct"] = (good_path, "... ?! -- ; (!) \u2014 \u00ab\u00bb")
    expected["9001-flt-punct"] = ("1", R.EMPTY_AFTER_NORM)
    # the shell-injection candidates: all must be kept and trained on
    shutil.copy(good_path, d / EVIL_WAV)
    files["2001-evil-name"] = (str(d / EVIL_WAV), good_text)
    sf.write(d / EVIL_SPH, audio, sr, format="NIST", subtype="PCM_16")
    files["2001-evil-sph"] = (str(d / EVIL_SPH), good_text)
    files["2001-evil-text"] = (good_path, EVIL_TEXT)
    files[EVIL_ID] = (good_path, good_text)
    files["2001-pipe"] = (f"touch {work / 'PIPE_RAN'} && cat '{good_path}' |", good_text)
    for utt in ("2001-evil-name", "2001-evil-sph", "2001-evil-text", EVIL_ID, "2001-pipe"):
        expected[utt] = ("", "kept")

    for utt, (src, text) in sorted(files.items()):
        wav_lines.append(f"{utt} {src}")
        text_lines.append(f"{utt} {text}")
        spk_lines.append(f"{utt} {utt.split('-')[0]}")
    # a repeated utterance id: the second line is dropped, the first kept
    text_lines.append(f"{good_id} A DIFFERENT TRANSCRIPT FOR THE SAME ID")
    expected[good_id] = ("0", R.DUPLICATE_ID)
    (train / "wav.scp").write_text("".join(x + "\n" for x in wav_lines))
    (train / "text").write_text("".join(x + "\n" for x in text_lines))
    (train / "utt2spk").write_text("".join(x + "\n" for x in spk_lines))
    for name in ("spk2utt", "utt2dur", "reco2dur"):  # would disagree with the edited files
        (train / name).unlink(missing_ok=True)
    return expected


def recipe_copy(tmp: Path) -> Path:
    """egs/inhouse with the CI configs made smaller still (vocabulary 40, 4 teacher updates)."""
    d = tmp / "egs" / "inhouse"
    shutil.copytree(
        REPO / "egs" / "inhouse", d, symlinks=True, ignore=shutil.ignore_patterns("data", "exp", "download")
    )
    (tmp / "utils").symlink_to(REPO / "utils")
    (tmp / "egs" / "TEMPLATE").symlink_to(REPO / "egs" / "TEMPLATE")  # the recipe's base configs and stages.sh
    lang = d / "conf" / "tiny" / "lang.yaml"
    cfg = yaml.safe_load(lang.read_text())
    cfg["tokenizer"]["vocab_size"] = 40
    lang.write_text(yaml.safe_dump(cfg))
    teacher = d / "conf" / "tiny" / "teacher.yaml"
    cfg = yaml.safe_load(teacher.read_text())
    cfg.setdefault("train", {}).update(max_steps=4, checkpoint_interval=2, log_interval=2, progress=False)
    cfg.setdefault("data", {})["valid_max_batches"] = 1  # merged over the file's bases
    teacher.write_text(yaml.safe_dump(cfg))
    return d


def import_baseline_kb() -> int:
    """Peak RSS (kB) of a process that only imports what stages 0 and 1 import."""
    r, peak = run_measured(
        [sys.executable, "-c", "import distill.bin.prepare_manifests, distill.bin.prepare_lang"], REPO
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return peak


def run_measured(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd`` under a small Python wrapper that reports the peak RSS (kB) of its descendants."""
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)"
    )
    r = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=cwd, capture_output=True, text=True, env=_env())
    peak = [int(x.split()[1]) for x in r.stderr.splitlines() if x.startswith("PEAK_RSS_KB")]
    return r, peak[-1] if peak else -1


def markers(root: Path) -> list[str]:
    """Marker files a shell would have created (under ``root``, or in the checkout's top directory)."""
    return sorted(str(p) for p in [*root.rglob("MARK_*"), *REPO.glob("MARK_*")])


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """The corpus with faults, the recipe copy after `run.sh --stop-stage 3`, and what it printed."""
    root = tmp_path_factory.mktemp("faults_data")
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "local" / "make_demo_corpus.py"),
            "--out",
            str(root / "demo"),
            "--size",
            "tiny",
            "--nj",
            "2",
        ],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    corpus = root / "demo" / "kaldi"
    expected = add_faults(corpus / "train", root)
    d = recipe_copy(root)
    (d / "KEEP_ME").mkdir()  # `rm -rf KEEP_ME` in a transcript must not reach a shell
    run01, peak01 = run_measured(
        ["bash", "run.sh", "--stop-stage", "1", "--conf-dir", "conf/tiny", "--corpus-dir", str(corpus)], d
    )
    run23 = subprocess.run(
        ["bash", "run.sh", "--stage", "2", "--stop-stage", "3", "--conf-dir", "conf/tiny", "--corpus-dir", str(corpus)],
        cwd=d,
        capture_output=True,
        text=True,
        env=_env(),
    )
    return root, d, expected, run01, (peak01, import_baseline_kb()), run23


def test_stages_0_1_count_every_fault_with_its_reason(faulty):
    root, d, expected, run01, peak01, _ = faulty
    assert run01.returncode == 0, run01.stderr[-4000:]
    assert "Stage 1 (lang): finished" in run01.stderr
    s0 = json.loads((d / "data/manifests/summary.json").read_text())["splits"]["train"]
    s1 = json.loads((d / "data/lang/summary.json").read_text())["splits"]["train"]
    for utt, (stage, reason) in expected.items():
        if reason == "kept":
            continue
        s = s0 if stage == "0" else s1
        if reason.startswith("note:"):
            reason = reason[5:]
            assert s["notes"].get(reason, 0) >= 1, (utt, reason, s["notes"])
        else:
            assert s["dropped_by_reason"].get(reason, 0) >= 1, (utt, reason, s["dropped_by_reason"])
        # each case is named with its id in the summary's examples of that reason
        assert any(e.startswith(utt + ":") or e == utt for e in s["examples"][reason]), (utt, s["examples"][reason])
    # exactly the injected faults were dropped (the demo corpus itself is clean)
    want0 = {R.TRUNCATED_AUDIO: 1, R.EMPTY_FILE: 1, R.UNREADABLE_AUDIO: 1, R.DUPLICATE_ID: 1}
    assert s0["dropped_by_reason"] == want0
    assert s0["notes"].get(R.NOTE_RESAMPLED) == 1 and s0["notes"].get(R.NOTE_DOWNMIXED) == 1
    assert s1["dropped_by_reason"] == {R.EMPTY_AFTER_NORM: 1, R.TOO_LONG: 1}
    # the 30-minute file was measured from its header (never decoded whole) and dropped by duration
    assert any(f"{LONG_SECONDS:.2f} s > 20.0 s" in e for e in s1["examples"][R.TOO_LONG])
    # peak memory of every stage-0/1 process stays near what their imports take: decoding the long
    # file at once would add 115 MB (float32) or 230 MB (float64)
    peak, base = peak01
    assert 0 < base and 0 < peak < base + 100 * 1024, f"peak RSS {peak / 1024:.0f} MB, imports {base / 1024:.0f} MB"


def test_training_runs_on_the_rest(faulty):
    root, d, expected, _, _, run23 = faulty
    assert run23.returncode == 0, run23.stderr[-4000:]
    assert (d / "exp/teacher/model/config.json").is_file()
    from lhotse import CutSet

    train_ids = {c.id for c in CutSet.from_file(d / "data/lang/cuts_train.jsonl.gz")}
    kept = {u for u, (_, reason) in expected.items() if reason == "kept" or reason.startswith("note:")}
    dropped = {u for u, (_, reason) in expected.items() if u not in kept and "duplicate" not in reason}
    assert kept <= train_ids and not dropped & train_ids
    log = (d / "exp/teacher/train.log").read_text()
    assert "skipping cut" not in log, "every kept utterance, resampled, down-mixed or oddly named, must load"
    recs = [json.loads(x) for x in (d / "exp/teacher/train_log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in recs if r["type"] == "train") == 4


def test_no_transcript_or_file_name_reaches_a_shell(faulty, monkeypatch):
    """Stages 0-3 ran over metacharacter-laden names, ids and texts: no marker, KEEP_ME intact; the
    wav.scp pipe command did run (the documented exception). Then the transcribe CLI on the same inputs."""
    root, d, _, run01, _, run23 = faulty
    assert run01.returncode == 0 and run23.returncode == 0
    assert markers(root) == []
    assert (d / "KEEP_ME").is_dir()
    assert (root / "PIPE_RAN").is_file()
    # every training cut's audio, loaded the way training loads it (stage 3 need not have drawn them all)
    from lhotse import CutSet

    from distill.data.audio import load_cut_audio

    monkeypatch.chdir(d)  # where a shell would `touch` its marker
    cuts = CutSet.from_file(d / "data/lang/cuts_train.jsonl.gz")
    assert all(load_cut_audio(c).size > 0 for c in cuts)
    assert markers(root) == []
    # the transcript was trained on as words (punctuation and symbols stripped by stage 1)
    words = (d / "data/lang/train_text.txt").read_text().split()
    assert {"TOUCH", "RM", "RF", "KEEP", "TEXT1", "TEXT3"} <= set(words)

    faults = root / "faults"
    scp = root / "evil_wav.scp"
    (root / "PIPE_RAN").unlink()
    scp.write_text(
        f"name {faults / EVIL_WAV}\nsph {faults / EVIL_SPH}\n{EVIL_ID} {faults / '8k.wav'}\n"
        f"pipe touch {root / 'PIPE_RAN'} && cat '{faults / 'stereo.wav'}' |\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.bin.transcribe",
            "--model",
            "exp/teacher/model",
            "--lang-dir",
            "data/lang",
            "--wav-scp",
            str(scp),
            str(faults / EVIL_WAV),
        ],
        cwd=d,
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ids = [line.split(maxsplit=1)[0] for line in r.stdout.splitlines() if line.strip()]
    # a positional file's id is its name without extension, whitespace made "_"
    assert sorted(ids) == sorted(["name", "sph", EVIL_ID, "pipe", Path(EVIL_WAV).stem.replace(" ", "_")]), r.stdout
    assert markers(root) == []
    assert (root / "PIPE_RAN").is_file()


def test_nan_samples_are_skipped_by_the_dataset(tmp_path, caplog):
    """Stage 0 decodes only the ends of a file, so NaN samples in the middle of a float WAV reach the
    data loader: the cut is skipped with a warning naming it (the model would refuse the batch)."""
    from lhotse import CutSet, Recording

    from distill.data.dataset import AsrDataset

    cuts = []
    for name, bad in (("good", False), ("nan", True)):
        x = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
        if bad:
            x[8000] = np.nan
        sf.write(tmp_path / f"{name}.wav", x, 16000, subtype="FLOAT")
        cuts.append(Recording.from_file(tmp_path / f"{name}.wav", recording_id=name).to_cut())
    ds = AsrDataset()
    batch = ds[CutSet.from_cuts(cuts)]
    assert batch["cut_ids"] == ["good"] and ds.num_failed == 1
    assert "skipping cut nan" in caplog.text and "NaN" in caplog.text
