"""Map-style dataset turning a sampler's CutSet into a batch of padded 16 kHz waveforms.

Batch (a dict):
  ``audio``       float32 [B, S], zero-padded 16 kHz mono samples
  ``audio_lens``  int64 [B], valid samples per row
  ``tokens``      list of B token-id lists (``None`` entries when no tokenizer is given)
  ``texts``       list of B normalised transcripts
  ``cut_ids``     list of B cut ids (duplicates padded in by a distributed sampler end in ``_dupN``)
  ``cuts``        the CutSet (only with ``return_cuts=True``)
"""

from __future__ import annotations

import logging
import random
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from lhotse import CutSet
from lhotse.augmentation.torchaudio import Speed

from distill.data.audio import TARGET_SR, load_cut_audio
from distill.data.augment import WaveformHook
from distill.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class AsrDataset(torch.utils.data.Dataset):
    """``dataset[cuts] -> batch``; optional speed perturbation and waveform hooks.

    Speed perturbation picks one factor per cut uniformly from ``speed_perturb`` (e.g. ``(0.9, 1.0,
    1.1)``), with a random generator seeded from ``seed`` and the batch's cut ids, so a batch is
    augmented the same way whichever worker loads it. A cut whose audio cannot be loaded (or holds NaN/inf
    samples, which the model refuses) is skipped with a warning naming it; a batch where every cut fails
    raises.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        speed_perturb: Sequence[float] | None = None,
        hooks: Sequence[WaveformHook] = (),
        seed: int = 0,
        return_cuts: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.speed_perturb = tuple(speed_perturb) if speed_perturb else ()
        self.hooks = list(hooks)
        self.seed = seed
        self.return_cuts = return_cuts
        self.num_failed = 0

    def _rng(self, cuts: CutSet) -> random.Random:
        key = "\n".join(c.id for c in cuts).encode("utf-8")
        return random.Random(zlib.crc32(key) ^ (self.seed * 1_000_003))

    def __getitem__(self, cuts: CutSet) -> dict:
        rng = self._rng(cuts) if self.speed_perturb else None
        waves: list[np.ndarray] = []
        kept = []
        for cut in cuts:
            factor = rng.choice(self.speed_perturb) if rng is not None else 1.0
            try:
                if cut.sampling_rate != TARGET_SR:
                    raise ValueError(f"sampling rate {cut.sampling_rate} Hz, expected {TARGET_SR} Hz")
                wav = load_cut_audio(cut)
                if factor != 1.0:
                    wav = Speed(factor)(wav[None], TARGET_SR)[0]
                if wav.size == 0:
                    raise ValueError("no samples")
                if not np.isfinite(wav).all():  # stage 0 decodes only the ends of a file
                    raise ValueError("audio contains NaN or inf")
            except Exception as e:  # noqa: BLE001 — any loader error: skip this cut, name it
                self.num_failed += 1
                log.warning("skipping cut %s: audio could not be loaded (%s: %s)", cut.id, type(e).__name__, e)
                continue
            waves.append(wav)
            kept.append(cut)
        if not kept:
            raise RuntimeError(f"no audio could be loaded for any cut of a batch: {[c.id for c in cuts]}")
        lens = torch.tensor([len(w) for w in waves], dtype=torch.long)
        audio = torch.zeros(len(waves), int(lens.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            audio[i, : len(w)] = torch.from_numpy(w)
        for hook in self.hooks:
            audio, lens = hook(audio, lens)
        texts = [c.supervisions[0].text if c.supervisions else "" for c in kept]
        tokens = [self.tokenizer.encode(t) if self.tokenizer is not None else None for t in texts]
        batch = {
            "audio": audio,
            "audio_lens": lens,
            "tokens": tokens,
            "texts": texts,
            "cut_ids": [c.id for c in kept],
        }
        if self.return_cuts:
            batch["cuts"] = CutSet.from_cuts(kept)
        return batch
