"""Stage 0 + 1 on a GigaSpeech release directory (GigaSpeech.json + Opus audio)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lhotse import CutSet

from distill.bin import prepare_lang, prepare_manifests
from distill.data import Tokenizer, load_cuts, make_dataloader
from distill.data import report as R
from test_data_helpers import make_gigaspeech

pytestmark = pytest.mark.skipif(shutil.which("opusenc") is None, reason="needs opusenc (opus-tools)")

TRAIN = ["{XS}", "{S}", "{M}", "{L}", "{XL}"]


def _subs(tags):
    return [t.strip("{}") for t in tags]


AUDIOS = [
    {"aid": "POD0000000001", "seconds": 9.0, "segments": [
        ("POD0000000001_S0000000", 0.0, 2.5, "AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE <QUESTIONMARK>", _subs(TRAIN)),
        ("POD0000000001_S0000001", 2.5, 4.0, "<SIL>", _subs(TRAIN)),
        ("POD0000000001_S0000002", 4.0, 6.0, "THE DOG RAN AWAY <PERIOD>", _subs(TRAIN)),
        ("POD0000000001_S0000003", 6.0, 8.5, "<NOISE> A LAZY FOX JUMPS <EXCLAMATIONPOINT>", _subs(TRAIN[2:])),  # not in XS
        ("POD0000000001_S0000004", 8.0, 11.0, "PAST THE END", _subs(TRAIN)),
        ("POD0000000001_S0000000", 8.5, 9.0, "DUPLICATE ID", _subs(TRAIN)),
    ]},
    {"aid": "POD0000000002", "seconds": 6.0, "segments": [
        ("POD0000000002_S0000000", 0.0, 2.0, "THE QUICK BROWN FOX <PERIOD>", ["DEV"]),
        ("POD0000000002_S0000001", 2.0, 3.0, "<MUSIC>", ["DEV"]),
        ("POD0000000002_S0000002", 3.0, 5.5, "HOME AWAY FROM HOME <PERIOD>", ["TEST"]),
        ("POD0000000002_S0000003", 5.5, 6.0, "<COMMA>", ["TEST"]),
    ]},
    {"aid": "POD0000000003", "seconds": 3.0, "segments": [  # its audio file is deleted below
        ("POD0000000003_S0000000", 0.0, 2.0, "THE LAZY DOG", _subs(TRAIN)),
    ]},
]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("giga")
    make_gigaspeech(root / "GigaSpeech", AUDIOS)
    (root / "GigaSpeech/audio/podcast/P0000/POD0000000003.opus").unlink()
    (root / "conf").mkdir()
    (root / "conf" / "data.yaml").write_text("corpus: gigaspeech\nsplits:\n  train: [XS, M]\n  dev: [DEV]\n  test: [TEST]\n")
    (root / "conf" / "lang.yaml").write_text(
        "text:\n  remove_tags: [<COMMA>, <PERIOD>, <QUESTIONMARK>, <EXCLAMATIONPOINT>]\n"
        "  garbage_tags: [<SIL>, <MUSIC>, <NOISE>, <OTHER>]\n"
        "tokenizer:\n  type: bpe\n  vocab_size: 40\nfilter:\n  min_duration: 0.5\n"
    )
    return root


def test_gigaspeech_stages(release, monkeypatch):
    monkeypatch.chdir(release)
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=GigaSpeech", "nj=2"]) == 0
    s0 = json.loads(Path("data/manifests/summary.json").read_text())["splits"]
    assert s0["XS"]["kept"] == 2 and s0["XS"]["dropped_by_reason"] == {
        R.GARBAGE_ONLY: 1, R.BAD_SEGMENT: 1, R.DUPLICATE_ID: 1, R.MISSING_AUDIO: 1}
    assert any("POD0000000003.opus" in e for e in s0["XS"]["examples"][R.MISSING_AUDIO])
    assert s0["M"]["kept"] == 3
    assert s0["DEV"]["kept"] == 1 and s0["DEV"]["dropped_by_reason"] == {R.GARBAGE_ONLY: 1}
    assert s0["TEST"]["kept"] == 1 and s0["TEST"]["dropped_by_reason"] == {R.EMPTY_TRANSCRIPT: 1}
    m = {c.id: c for c in CutSet.from_file("data/manifests/gigaspeech_cuts_M.jsonl.gz")}
    c = m["POD0000000001_S0000000"]
    assert c.supervisions[0].text == "AS THEY'RE LEAVING CAN KASH PULL ZAHRA ASIDE"
    assert c.supervisions[0].custom["orig_text"].endswith("<QUESTIONMARK>")
    assert c.start == pytest.approx(0.0) and c.duration == pytest.approx(2.5)
    assert c.recording.sampling_rate == 16000 and c.recording.duration == pytest.approx(9.0, abs=0.03)
    assert m["POD0000000001_S0000003"].supervisions[0].text == "<NOISE> A LAZY FOX JUMPS"

    assert prepare_lang.main(["--config", "conf/lang.yaml"]) == 0
    s1 = json.loads(Path("data/lang/summary.json").read_text())["splits"]
    assert s1["M"]["notes"] == {R.NOTE_TAGS_REMOVED: 1}
    # the subsets nest (XS ⊂ M): utterances already taken from XS are not added twice
    assert s1["XS"]["kept"] == 2 and s1["M"]["kept"] == 1 and s1["M"]["dropped_by_reason"] == {R.DUPLICATE_ID: 2}
    train_ids = [c.id for c in load_cuts("data/lang", "train")]
    assert len(train_ids) == len(set(train_ids)) == 3
    train = {c.id: c for c in load_cuts("data/lang", "train")}
    assert len(train) == 3 and train["POD0000000001_S0000003"].supervisions[0].text == "A LAZY FOX JUMPS"
    assert train["POD0000000001_S0000003"].supervisions[0].custom["orig_text"].startswith("<NOISE>")
    tok = Tokenizer.load("data/lang")
    dl = make_dataloader(load_cuts("data/lang", "dev"), tok, 100.0, shuffle=False)
    batch = next(iter(dl))
    assert batch["cut_ids"] == ["POD0000000002_S0000000"] and batch["texts"] == ["THE QUICK BROWN FOX"]
    assert int(batch["audio_lens"][0]) == 32000  # 2 s of Opus, decoded at 16 kHz
    assert batch["audio"][0].abs().max() > 0.01
    test = load_cuts("data/lang", "test")
    assert list(test) == ["TEST"] and [c.id for c in test["TEST"]] == ["POD0000000002_S0000002"]


def test_missing_metadata_is_a_clear_error(tmp_path, monkeypatch, caplog):
    (tmp_path / "rel").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "data.yaml").write_text("corpus: gigaspeech\nsplits:\n  train: [XS]\n")
    monkeypatch.chdir(tmp_path)
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=rel"]) == 1
    assert "rel/GigaSpeech.json not found" in caplog.text
    (tmp_path / "rel" / "GigaSpeech.json").write_text("{not json")
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=rel"]) == 1
    assert "is not valid JSON" in caplog.text
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=rel", "splits.train=[XXL]"]) == 1
    assert "unknown GigaSpeech subset 'XXL'" in caplog.text
