"""The recipes' stage 0/1 configs are valid, and run.sh's flat ``parts=[...]`` override maps parts by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_data_helpers import make_librispeech

from distill.bin.prepare_lang import PrepareLangConfig
from distill.bin.prepare_manifests import PrepareManifestsConfig, main
from distill.config import load_config, read_config
from distill.data.prep_common import DataPrepError
from distill.data.prepare import resolve_splits, split_of

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["librispeech", "gigaspeech", "inhouse"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_configs_validate(recipe, tmp_path, monkeypatch):
    conf = REPO / "egs" / recipe / "conf"
    data = load_config(PrepareManifestsConfig, conf / "data.yaml", ["corpus_dir=x"])
    assert data.corpus == {"librispeech": "librispeech", "gigaspeech": "gigaspeech", "inhouse": "kaldi"}[recipe]
    assert resolve_splits(data)["train"]
    (tmp_path / "data" / "manifests").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # manifest_dir must exist
    lang = load_config(PrepareLangConfig, conf / "lang.yaml")
    assert lang.tokenizer.vocab_size > 3 and lang.filter.max_duration > lang.filter.min_duration


def test_split_of_names():
    assert [split_of(p) for p in ("train-clean-100", "train-other-500", "dev-other", "test-clean")] == [
        "train",
        "train",
        "dev",
        "test",
    ]
    assert [split_of(p) for p in ("XS", "XL", "DEV", "TEST", "train_sp", "dev93", "test_eval92")] == [
        "train",
        "train",
        "dev",
        "test",
        "train",
        "dev",
        "test",
    ]
    with pytest.raises(DataPrepError, match="cannot tell whether part 'eval2000'"):
        split_of("eval2000")


def test_flat_parts_override(tmp_path, monkeypatch):
    """What `run.sh --parts "..."` passes: parts=[a,b,c] replaces the splits mapping."""
    make_librispeech(tmp_path / "corpus", {"train-clean-100": 4, "dev-clean": 2, "test-other": 2})
    (tmp_path / "conf").mkdir()
    merged = read_config(REPO / "egs/librispeech/conf/data.yaml")  # with its base: the file stands alone
    (tmp_path / "conf" / "data.yaml").write_text(yaml.safe_dump(merged))
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "--config",
            "conf/data.yaml",
            f"corpus_dir={tmp_path / 'corpus'}",
            "nj=1",
            "parts=[train-clean-100,dev-clean,test-other]",
        ]
    )
    assert rc == 0
    idx = yaml.safe_load(Path("data/manifests/splits.yaml").read_text())
    assert idx["splits"] == {"train": ["train-clean-100"], "dev": ["dev-clean"], "test": ["test-other"]}
