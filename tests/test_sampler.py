"""The training data pipeline: DDP coverage, exact mid-epoch resume, batch contents, augmentation."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.dataset import SimpleCutSampler
from test_data_helpers import WORDS

from distill.data import AsrDataLoader, AsrDataset, Tokenizer, WaveformTimeMask, make_dataloader, mask_time_channels
from distill.data.tokenizer import build_char_tokenizer
from distill.train import IndexBatchSampler

N_CUTS = 57


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[CutSet, dict[str, np.ndarray], Tokenizer]:
    d = tmp_path_factory.mktemp("sampler")
    rng = np.random.default_rng(0)
    cuts, audio = [], {}
    for i in range(N_CUTS):
        uid = f"u{i:03d}"
        x = (0.1 * rng.standard_normal(int(rng.integers(3000, 16000)))).astype(np.float32)
        sf.write(d / f"{uid}.wav", x, 16000, subtype="FLOAT")
        audio[uid] = x
        rec = Recording.from_file(d / f"{uid}.wav", recording_id=uid)
        text = " ".join(rng.choice(WORDS, 3))
        sup = SupervisionSegment(id=uid, recording_id=uid, start=0, duration=rec.duration, channel=0, text=text)
        cut = rec.to_cut()
        cut.supervisions = [sup]
        cuts.append(cut)
    cs = CutSet.from_cuts(cuts)
    cs.to_file(d / "cuts.jsonl.gz")
    tok = build_char_tokenizer(WORDS)
    return CutSet.from_jsonl_lazy(d / "cuts.jsonl.gz"), audio, tok


def _ids(dl, epoch: int) -> list[list[str]]:
    dl.set_epoch(epoch)
    return [b["cut_ids"] for b in dl]


@pytest.mark.parametrize("epoch", [0, 3])
def test_two_ranks_cover_every_cut_once(corpus, epoch):
    cuts, _, tok = corpus
    per_rank = [
        _ids(
            make_dataloader(cuts, tok, max_duration=4.0, shuffle=True, rank=r, world_size=2, seed=7, num_buckets=4),
            epoch,
        )
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1])  # ranks stay in lockstep
    flat = [c for batches in per_rank for b in batches for c in b]
    real = Counter(c for c in flat if "_dup" not in c)
    assert set(real) == {f"u{i:03d}" for i in range(N_CUTS)} and set(real.values()) == {1}
    dups = [c for c in flat if "_dup" in c]
    assert len(dups) <= 1  # at most world_size-1 padding copies, marked as such
    # the two ranks never share a cut
    assert not ({c for b in per_rank[0] for c in b} & {c for b in per_rank[1] for c in b})


def test_epochs_reshuffle(corpus):
    cuts, _, tok = corpus
    dl = make_dataloader(cuts, tok, max_duration=4.0, shuffle=True, seed=7, num_buckets=4)
    e0, e1 = _ids(dl, 0), _ids(dl, 1)
    assert e0 != e1 and sorted(sum(e0, [])) == sorted(sum(e1, []))
    assert _ids(dl, 0) == e0  # same epoch, same order


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch(corpus, num_workers):
    """The resumed remainder equals the uninterrupted remainder (ids and perturbed audio), also with workers."""
    cuts, _, tok = corpus

    def mk(workers: int):
        return make_dataloader(
            cuts,
            tok,
            max_duration=3.0,
            shuffle=True,
            rank=1,
            world_size=2,
            seed=3,
            num_buckets=4,
            num_workers=workers,
            speed_perturb=(0.9, 1.0, 1.1),
        )

    ref = mk(0)
    ref.set_epoch(2)
    full = list(ref)
    assert len(full) >= 6
    dl = mk(num_workers)
    dl.set_epoch(2)
    it = iter(dl)
    head = [next(it) for _ in range(4)]
    state = dl.state_dict()
    del it
    resumed = mk(num_workers)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what a training loop does at the top of the epoch: must not restart it
    rest = list(resumed)
    assert [b["cut_ids"] for b in head] == [b["cut_ids"] for b in full[:4]]
    assert [b["cut_ids"] for b in rest] == [b["cut_ids"] for b in full[4:]]
    for a, b in zip(rest, full[4:]):
        # same perturbation factors; workers may resample with another thread count (float rounding)
        assert torch.equal(a["audio_lens"], b["audio_lens"])
        torch.testing.assert_close(a["audio"], b["audio"], rtol=0, atol=1e-5)
    # the next epoch starts from its beginning again
    resumed.set_epoch(3)
    assert sum(len(b["cut_ids"]) for b in resumed) > 0


class _Ids(torch.utils.data.Dataset):
    """Batches as lists of ids: a lhotse CutSet or a list of indices (IndexBatchSampler)."""

    def __getitem__(self, batch):  # type: ignore[override]
        return [c.id for c in batch] if isinstance(batch, CutSet) else [f"i{i}" for i in batch]


def _dummy_cuts(n: int) -> CutSet:
    from lhotse.testing.dummies import dummy_cut

    return CutSet.from_cuts(dummy_cut(i, duration=1.0 + (i % 3) / 2) for i in range(n))


def _sampler(kind: str, rank: int):
    if kind == "index":
        return IndexBatchSampler(23, batch_size=2, shuffle=True, seed=5, rank=rank, world_size=2)
    # fewer than 4 cuts make make_dataloader pick SimpleCutSampler; its own state_dict would fast-forward
    # by the cuts the prefetching workers took, and lhotse's fast-forward ignores the other rank's cuts
    return SimpleCutSampler(_dummy_cuts(23), max_duration=3.0, shuffle=True, seed=5, rank=rank, world_size=2)


@pytest.mark.parametrize("kind", ["simple", "index"])
def test_resume_with_prefetching_workers_any_sampler_two_ranks(kind):
    """Each rank, stopped after 3 batches and resumed in a new loader, yields the uninterrupted epoch;
    together the ranks still see every item exactly once."""
    seen = []
    for rank in range(2):
        ref = AsrDataLoader(_Ids(), _sampler(kind, rank))
        ref.set_epoch(1)
        full = list(ref)
        assert len(full) >= 5
        dl = AsrDataLoader(_Ids(), _sampler(kind, rank), num_workers=2)
        dl.set_epoch(1)
        it = iter(dl)
        head = [next(it) for _ in range(3)]
        state = dl.state_dict()
        assert state == {"epoch": 1, "count": 3}
        del it
        resumed = AsrDataLoader(_Ids(), _sampler(kind, rank), num_workers=2)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert head + rest == full
        assert resumed.state_dict() == {"epoch": 1, "count": len(full)}
        seen += [i for b in full for i in b]
    real = Counter(i for i in seen if "_dup" not in i)
    assert set(real.values()) == {1} and len(real) == 23


def test_iter_draws_the_loader_seed_at_once(corpus):
    """``iter()`` builds the torch iterator (drawing its seed from torch's RNG); the batches after it
    draw nothing, so an RNG state restored right after ``iter()`` continues unchanged, also on resume."""
    cuts, _, tok = corpus
    for state in (None, {"epoch": 0, "count": 2}):
        dl = make_dataloader(cuts, tok, max_duration=3.0, shuffle=True, seed=3, num_buckets=4)
        if state:
            dl.load_state_dict(state)
        before = torch.get_rng_state()
        it = iter(dl)
        assert not torch.equal(torch.get_rng_state(), before)
        torch.set_rng_state(before)  # what the trainer does after iter()
        next(it)
        next(it)
        assert torch.equal(torch.get_rng_state(), before)


def test_state_formats_and_errors(corpus):
    cuts, _, tok = corpus

    def mk():
        return make_dataloader(cuts, tok, max_duration=3.0, shuffle=True, seed=3, num_buckets=4)

    ref = mk()
    ref.set_epoch(2)
    full = [b["cut_ids"] for b in ref]
    # the state earlier trainer versions checkpointed: the lhotse sampler state after `count` batches
    legacy = mk()
    legacy.set_epoch(2)
    it = iter(legacy.sampler)
    for _ in range(3):
        next(it)
    old = {"inner": legacy.sampler.state_dict(), "count": 3}
    resumed = mk()
    resumed.load_state_dict(old)
    assert [b["cut_ids"] for b in resumed] == full[3:]
    with pytest.raises(ValueError, match="expected .*'count'.*got \\['position'\\]"):
        mk().load_state_dict({"position": 3})
    too_far = mk()
    too_far.load_state_dict({"epoch": 2, "count": len(full) + 1})
    with pytest.raises(
        RuntimeError,
        match=f"position is batch {len(full) + 1} of epoch 2, but the sampler yields only {len(full)} batches",
    ):
        iter(too_far)


def test_batch_contents(corpus):
    cuts, audio, tok = corpus
    dl = make_dataloader(cuts, tok, max_duration=5.0, shuffle=False)
    texts = {c.id: c.supervisions[0].text for c in cuts}
    seen = set()
    for b in dl:
        assert b["audio"].dtype == torch.float32 and b["audio"].dim() == 2
        assert b["audio_lens"].dtype == torch.int64
        assert float(b["audio_lens"].sum()) / 16000 <= 5.0 + 1e-6
        assert int(b["audio_lens"].max()) == b["audio"].shape[1]
        for i, uid in enumerate(b["cut_ids"]):
            n = len(audio[uid])
            assert int(b["audio_lens"][i]) == n
            np.testing.assert_array_equal(b["audio"][i, :n].numpy(), audio[uid])
            assert not b["audio"][i, n:].any()
            assert b["texts"][i] == texts[uid] and b["tokens"][i] == tok.encode(texts[uid])
            seen.add(uid)
    assert len(seen) == N_CUTS


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_length(corpus, factor):
    cuts, audio, tok = corpus
    some = CutSet.from_cuts(c for _, c in zip(range(12), cuts))
    dl = make_dataloader(some, tok, max_duration=100.0, shuffle=False, speed_perturb=(factor,))
    for b in dl:
        for i, uid in enumerate(b["cut_ids"]):
            assert abs(int(b["audio_lens"][i]) - len(audio[uid]) / factor) <= 2


def test_hooks_and_unloadable_cut(corpus, tmp_path, caplog):
    cuts, audio, tok = corpus
    first = [c for _, c in zip(range(3), cuts)]
    calls = []

    def double(x, lens):
        calls.append(x.shape)
        return 2 * x, lens

    ds = AsrDataset(tok, hooks=[double])
    b = ds[CutSet.from_cuts(first)]
    assert calls and torch.equal(b["audio"][0, : len(audio[first[0].id])], torch.from_numpy(2 * audio[first[0].id]))
    # a cut whose file vanished is skipped with a warning naming it; a batch of only such cuts raises
    rec = Recording.from_file(next(iter(Path(first[0].recording.sources[0].source).parent.glob("*.wav"))))
    (tmp_path / "gone.wav").write_bytes(Path(rec.sources[0].source).read_bytes())
    gone = Recording.from_file(tmp_path / "gone.wav").to_cut()
    (tmp_path / "gone.wav").unlink()
    with caplog.at_level(logging.WARNING):
        b = AsrDataset(tok)[CutSet.from_cuts([first[1], gone])]
    assert b["cut_ids"] == [first[1].id] and gone.id in caplog.text
    with pytest.raises(RuntimeError, match=gone.id):
        AsrDataset(tok)[CutSet.from_cuts([gone])]


def test_waveform_time_mask_hook():
    x = torch.ones(3, 8000)
    lens = torch.tensor([8000, 4000, 100])
    y, l2 = WaveformTimeMask(num_masks=2, max_seconds=0.05, seed=1)(x, lens)
    assert torch.equal(l2, lens) and y.shape == x.shape
    zeroed = (y == 0).sum(1)
    assert (zeroed <= 2 * 800).all() and zeroed.sum() > 0
    assert y[1, 4000:].eq(1).all() and y[2, 100:].eq(1).all()  # nothing masked past a row's length


def test_mask_time_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 16, requires_grad=True)
    lens = torch.tensor([50, 30, 10, 1])
    y, tm, cm = mask_time_channels(
        x,
        lens,
        num_time_masks=3,
        max_time_width=5,
        num_channel_masks=2,
        max_channel_width=3,
        generator=g,
        return_masks=True,
    )
    assert y.shape == x.shape and not torch.equal(y, x)
    for b in range(4):
        assert not tm[b, lens[b] :].any()
        assert int(tm[b].sum()) <= 15 and int(cm[b].sum()) <= 6
        masked = tm[b][:, None] | cm[b][None, :]
        assert torch.equal(y[b][masked], torch.zeros(int(masked.sum())))
        assert torch.equal(y[b][~masked], x[b][~masked])
    y.sum().backward()
    assert torch.equal(x.grad, (~(tm[:, :, None] | cm[:, None, :])).float())
    # a [C] mask value (a learned mask embedding) fills masked frames; same generator seed, same masks
    emb = torch.arange(16.0)
    y2, tm2, _ = mask_time_channels(
        x.detach(),
        lens,
        num_time_masks=3,
        max_time_width=5,
        num_channel_masks=0,
        mask_value=emb,
        generator=torch.Generator().manual_seed(5),
        return_masks=True,
    )
    y3 = mask_time_channels(
        x.detach(),
        lens,
        num_time_masks=3,
        max_time_width=5,
        num_channel_masks=0,
        mask_value=emb,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(y2, y3)
    assert tm2.any() and torch.equal(y2[tm2], emb.expand(int(tm2.sum()), 16))
    with pytest.raises(ValueError, match="B, T, C"):
        mask_time_channels(torch.zeros(3, 4))
