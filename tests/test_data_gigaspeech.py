"""Stage 0 + 1 on a GigaSpeech release directory (GigaSpeech.json + Opus audio)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio import AudioSource
from test_data_helpers import make_gigaspeech

from distill.bin import prepare_lang, prepare_manifests
from distill.data import Tokenizer, gigaspeech, load_cuts, make_dataloader
from distill.data import audio as audio_mod
from distill.data import report as R
from distill.data.audio import probe_many
from distill.data.manifests import mono_cut_dicts, read_cuts_size, supervision_dict, write_part
from distill.data.prep_common import Utterance, assemble, cuts_from_manifests

pytestmark = pytest.mark.skipif(shutil.which("opusenc") is None, reason="needs opusenc (opus-tools)")

TRAIN = ["{XS}", "{S}", "{M}", "{L}", "{XL}"]


def _subs(tags):
    return [t.strip("{}") for t in tags]


AUDIOS = [
    {
        "aid": "POD0000000001",
        "seconds": 9.0,
        "segments": [
            (
                "POD0000000001_S0000000",
                0.0,
                2.5,
                "AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE <QUESTIONMARK>",
                _subs(TRAIN),
            ),
            ("POD0000000001_S0000001", 2.5, 4.0, "<SIL>", _subs(TRAIN)),
            ("POD0000000001_S0000002", 4.0, 6.0, "THE DOG RAN AWAY <PERIOD>", _subs(TRAIN)),
            (
                "POD0000000001_S0000003",
                6.0,
                8.5,
                "<NOISE> A LAZY FOX JUMPS <EXCLAMATIONPOINT>",
                _subs(TRAIN[2:]),
            ),  # not in XS
            ("POD0000000001_S0000004", 8.0, 11.0, "PAST THE END", _subs(TRAIN)),
            ("POD0000000001_S0000000", 8.5, 9.0, "DUPLICATE ID", _subs(TRAIN)),
        ],
    },
    {
        "aid": "POD0000000002",
        "seconds": 6.0,
        "segments": [
            ("POD0000000002_S0000000", 0.0, 2.0, "THE QUICK BROWN FOX <PERIOD>", ["DEV"]),
            ("POD0000000002_S0000001", 2.0, 3.0, "<MUSIC>", ["DEV"]),
            ("POD0000000002_S0000002", 3.0, 5.5, "HOME AWAY FROM HOME <PERIOD>", ["TEST"]),
            ("POD0000000002_S0000003", 5.5, 6.0, "<COMMA>", ["TEST"]),
        ],
    },
    {
        "aid": "POD0000000003",
        "seconds": 3.0,
        "segments": [  # its audio file is deleted below
            ("POD0000000003_S0000000", 0.0, 2.0, "THE LAZY DOG", _subs(TRAIN)),
        ],
    },
]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("giga")
    make_gigaspeech(root / "GigaSpeech", AUDIOS)
    (root / "GigaSpeech/audio/podcast/P0000/POD0000000003.opus").unlink()
    (root / "conf").mkdir()
    (root / "conf" / "data.yaml").write_text(
        "corpus: gigaspeech\nsplits:\n  train: [XS, M]\n  dev: [DEV]\n  test: [TEST]\n"
    )
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
        R.GARBAGE_ONLY: 1,
        R.BAD_SEGMENT: 1,
        R.DUPLICATE_ID: 1,
        R.MISSING_AUDIO: 1,
    }
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
    hours, n = read_cuts_size("data/lang", "train")  # the sizes stage 1 records (e.g. for the teacher cache)
    assert n == 3 and hours == pytest.approx(sum(c.duration for c in train.values()) / 3600, abs=1e-4)
    assert read_cuts_size("data/lang", "test") == (pytest.approx(2.5 / 3600, abs=1e-4), 1)


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
    (tmp_path / "rel" / "GigaSpeech.json").write_bytes(b'{"audios": [{"aid": "\xff"}]}')
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=rel"]) == 1
    assert "GigaSpeech.json is not UTF-8 (lexical error: invalid bytes in UTF8 string.)" in caplog.text
    (tmp_path / "rel" / "GigaSpeech.json").write_text('{"dataset": "GigaSpeech"}')
    assert prepare_manifests.main(["--config", "conf/data.yaml", "corpus_dir=rel"]) == 1
    assert "has no 'audios' list" in caplog.text


# ---------------------------------------------------------------- streamed reader vs json.loads


def _reference_reader(corpus_dir: Path, subsets, report: R.PrepReport, nj: int = 1, check="tail"):
    """The stage-0 reader before streaming (one ``json.loads`` of the whole file, all utterances in memory),
    kept verbatim as the oracle of :func:`gigaspeech.write_manifests`."""
    data = json.loads((corpus_dir / "GigaSpeech.json").read_bytes().decode("utf-8"))
    per_part: dict[str, list[Utterance]] = {s: [] for s in subsets}
    sources: dict[str, str] = {}
    seen_sid: dict[str, str] = {}
    seen_aid: set[str] = set()
    for n, audio in enumerate(data["audios"]):
        aid = audio.get("aid")
        rel = audio.get("path")
        if not aid or not rel or not isinstance(audio.get("segments"), list):
            for s in subsets:
                report.drop(s, R.BAD_LINE, str(aid or f"audios[{n}]"), "GigaSpeech.json entry lacks aid/path/segments")
            continue
        if aid in seen_aid:
            for s in subsets:
                report.drop(s, R.DUPLICATE_ID, aid, "audio id repeated in GigaSpeech.json (kept the first)")
            continue
        seen_aid.add(aid)
        for seg in audio["segments"]:
            tags = {str(t).strip("{}") for t in seg.get("subsets", [])}
            wanted = [s for s in subsets if s in tags]
            if not wanted:
                continue
            sid = seg.get("sid")
            try:
                start, end = float(seg["begin_time"]), float(seg["end_time"])
                orig = str(seg["text_tn"])
            except (KeyError, TypeError, ValueError):
                for s in wanted:
                    report.drop(s, R.BAD_LINE, str(sid), f"segment of {aid} lacks begin_time/end_time/text_tn")
                continue
            if sid in seen_sid:
                for s in wanted:
                    report.drop(s, R.DUPLICATE_ID, str(sid), f"segment id repeated (first in {seen_sid[sid]})")
                continue
            seen_sid[sid] = aid
            text = gigaspeech.clean_text(orig)
            for s in wanted:
                if not text:
                    report.drop(s, R.EMPTY_TRANSCRIPT, sid, f"text_tn={orig!r}")
                elif gigaspeech.is_garbage(text):
                    report.drop(s, R.GARBAGE_ONLY, sid, text)
                else:
                    per_part[s].append(
                        Utterance(
                            id=sid,
                            recording_id=aid,
                            text=text,
                            speaker=seg.get("speaker"),
                            start=start,
                            end=end,
                            language="English",
                            custom={"orig_text": orig},
                        )
                    )
                    sources[aid] = str(corpus_dir / rel)
    probes = probe_many(sources.items(), nj=nj, check=check)
    out = {}
    for s in subsets:
        rec_ids = {u.recording_id for u in per_part[s]}
        out[s] = assemble(s, sources, per_part[s], {r: probes[r] for r in rec_ids}, report)
    return out


XL = ["XL"]
EXTRA = [  # ids that are not "<aid>_S<n>", repeats across recordings, non-ASCII text, a shared file
    {
        "aid": "POD0000000004",
        "seconds": 5.0,
        "segments": [
            ("POD0000000004_S0000000", 0.0, 2.0, "CAFÉ NAÏVE ÆON <PERIOD>", XL),
            ("POD0000000001_S0000002", 2.0, 3.0, "A REGULAR ID OF ANOTHER RECORDING", XL),
            ("odd-id-1", 3.0, 4.0, "AN IRREGULAR ID", XL + ["L"]),
            ("POD0000000004_S0000000", 4.0, 4.5, "REPEATED IN ITS RECORDING", XL),
            ("POD0000000004_S0000001", 4.123456789, 4.987654321, "TIMES BETWEEN SAMPLES", XL + ["S"]),
            ("POD0000000004_S0000002", 4.2, 4.3, "OVERLAPS THE LAST ONE", ["S"]),
        ],
    },
    {
        "aid": "POD0000000005",
        "seconds": 4.0,
        "segments": [
            ("odd-id-1", 0.0, 1.0, "THE IRREGULAR ID AGAIN", XL),
            ("POD0000000005_S0000000", 1.0, 3.0, "FINE", XL + ["DEV"]),
        ],
    },
    {
        "aid": "POD_0000000006",
        "seconds": 3.0,
        "segments": [  # an aid with "_"
            ("POD_0000000006_S1", 0.0, 1.0, "UNDERSCORE AID", XL),
            ("POD_0000000006_S1", 1.0, 2.0, "UNDERSCORE AID REPEATED", XL),
        ],
    },
]


def test_streamed_reader_equals_json_loads_reader(tmp_path):
    """Stage 0 on the streamed JSON writes the same manifests (and counts the same drops) as the reader
    that loaded the whole file with json.loads."""
    root = make_gigaspeech(tmp_path / "GigaSpeech", AUDIOS + EXTRA)
    (root / "audio/podcast/P0000/POD0000000003.opus").unlink()
    meta = json.loads((root / "GigaSpeech.json").read_text())
    shared = dict(meta["audios"][3], aid="POD0000000007", path=meta["audios"][0]["path"])  # 04's segments on 01's file
    shared["segments"] = [dict(g, sid=g["sid"].replace("04", "07")) for g in shared["segments"]]
    meta["audios"] += [shared, {"aid": "POD0000000008"}, dict(meta["audios"][1])]  # no path; a repeated aid
    (root / "GigaSpeech.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    parts = ["XS", "S", "M", "L", "XL", "DEV", "TEST"]

    ref_report = R.PrepReport("prepare_manifests")
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = {p: write_part(ref_dir, "gigaspeech", p, *m) for p, m in _reference_reader(root, parts, ref_report).items()}
    report = R.PrepReport("prepare_manifests")
    got = gigaspeech.write_manifests(root, parts, report, tmp_path / "new", nj=2)

    assert got == ref
    for part in parts:
        for kind in ("recordings", "supervisions", "cuts"):

            def lines(d: Path, part: str = part, kind: str = kind) -> list[str]:  # byte for byte, any order
                with gzip.open(d / ref[part][kind], "rt", encoding="utf-8") as f:
                    return sorted(f)

            assert lines(tmp_path / "new") == lines(ref_dir), (part, kind)
    assert got["XL"]["num_utterances"] > 5 and got["DEV"]["num_recordings"] == 2
    assert report.to_dict() == ref_report.to_dict()
    xl = report.to_dict()["splits"]["XL"]["dropped_by_reason"]
    assert xl[R.DUPLICATE_ID] == 9 and xl[R.BAD_LINE] == 1  # 8 segment ids + 1 aid; the entry without a path


def test_metadata_is_streamed_and_each_file_probed_once(tmp_path, monkeypatch):
    """No json.loads of the metadata; a file shared by many recordings is probed once."""
    audio = {
        "aid": "POD0000000001",
        "seconds": 6.0,
        "segments": [(f"POD0000000001_S{k:07d}", k * 1.0, k + 0.9, "SOME WORDS", XL) for k in range(5)],
    }
    root = make_gigaspeech(tmp_path / "GigaSpeech", [audio])
    meta = json.loads((root / "GigaSpeech.json").read_text())
    for n in range(2, 200):
        meta["audios"].append(
            dict(
                meta["audios"][0],
                aid=f"POD{n:010d}",
                segments=[
                    dict(g, sid=g["sid"].replace("0000000001", f"{n:010d}")) for g in meta["audios"][0]["segments"]
                ],
            )
        )
    (root / "GigaSpeech.json").write_text(json.dumps(meta))
    calls: list[str] = []
    real = audio_mod.probe_source
    monkeypatch.setattr(audio_mod, "probe_source", lambda src, *a, **k: calls.append(src) or real(src, *a, **k))
    monkeypatch.setattr(json, "loads", None)  # the metadata must not be read in one piece
    got = gigaspeech.write_manifests(root, ["XL"], R.PrepReport("x"), tmp_path / "out", nj=2)
    assert got["XL"]["num_recordings"] == 199 and got["XL"]["num_utterances"] == 995
    assert calls == [str(root / meta["audios"][0]["path"])]


def test_seen_segment_ids_merges_hashes():
    seen = gigaspeech._SeenSegmentIds()
    assert seen.first_seen_in("A_S1", "A") is None and seen.first_seen_in("A_S1", "A") == "A"
    assert seen.first_seen_in("B_S1", "B") is None and seen.first_seen_in("A_S1", "C") == "A"  # irregular in C
    assert seen.first_seen_in("odd", "C") is None and seen.first_seen_in("odd", "D") == "C"
    assert seen.first_seen_in("odd", "odd_x") == "C"
    for batch in range(3):
        seen._new_hashes |= {hash(f"x{batch}_{i}") for i in range(100)}
        seen._merge()
    assert len(seen._hashes) == 302 and np.all(np.diff(seen._hashes) > 0)
    assert seen.first_seen_in("B_S1", "Z") == "B" and seen.first_seen_in("B_S2", "Z") is None
    assert seen.first_seen_in("x1_7", "Z") == "x1" and seen.first_seen_in("x1_7", "x1") is None


def test_mono_cut_dicts_equal_lhotse_trim():
    """The fast cut serialisation of stage 0 gives lhotse's trim_to_supervisions + to_dict, byte for byte,
    for times between samples and a segment that ends a fraction of a sample past the audio."""
    rng = np.random.default_rng(0)
    rec = Recording(
        id="r",
        sources=[AudioSource(type="file", channels=[0], source="/a.opus")],
        sampling_rate=16000,
        num_samples=160_003,
        duration=160_003 / 16000,
    )
    t = np.sort(rng.uniform(0, 9.8, 40))
    sups = [
        SupervisionSegment(
            id=f"r_S{k}",
            recording_id="r",
            start=round(float(a), 6),
            duration=round(float(b - a), 6),
            channel=0,
            text="A B",
            speaker="N/A",
            language="English",
            custom={"orig_text": "A B"},
        )
        for k, (a, b) in enumerate(zip(t[0::2], t[1::2]))
    ]
    sups.append(
        SupervisionSegment(
            id="r_end", recording_id="r", start=9.9, duration=round(rec.duration - 9.9 + 3e-5, 6), channel=0, text="END"
        )
    )
    want = [
        json.dumps(c.to_dict())
        for c in cuts_from_manifests(RecordingSet.from_recordings([rec]), SupervisionSet.from_segments(sups))
    ]
    got = mono_cut_dicts(rec, rec.to_dict(), sups, [supervision_dict(s) for s in sups])
    assert got is not None and sorted(json.dumps(c) for c in got) == sorted(want)
    assert [supervision_dict(s) for s in sups] == [s.to_dict() for s in sups]
    overlapping = sups[:2] + [
        SupervisionSegment(id="o", recording_id="r", start=sups[1].start, duration=0.1, channel=0)
    ]
    assert mono_cut_dicts(rec, rec.to_dict(), overlapping, [s.to_dict() for s in overlapping]) is None
