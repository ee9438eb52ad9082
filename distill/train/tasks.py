"""Per-stage loss assembly: the modules the :class:`~distill.train.Trainer` trains.

Each task is one ``nn.Module`` holding every trainable part (the trained model and the distillation
projections) plus, for distillation, the frozen teacher; ``forward(batch)`` returns the summed loss,
its frame count and the unweighted components, so that a DDP wrapper sees one forward per batch.

* :class:`TeacherTask` (stage 3): LF-MMI (+ CTC) fine-tuning of one model on the labels.
* :class:`DistillTask` (stages 4 and 5, baselines): a student learns from a frozen teacher (eval mode,
  no gradient, excluded from checkpoints) with :class:`~distill.losses.objective.DistillObjective`;
  teacher outputs come on the fly or from a :class:`TeacherCache`; with ``chunks`` the student is
  chunk-streaming and draws its chunk size per batch (dynamic-chunk training).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from distill.data.augment import mask_time_channels
from distill.losses.objective import DistillObjective, TeacherTargets
from distill.models.config import W2V2Config
from distill.models.wav2vec2 import W2V2Model

from . import distributed as du
from .checkpoint import load_error_detail
from .trainer import LossResult

__all__ = ["TeacherTask", "DistillTask", "TeacherCache", "TeacherCacheError", "cache_values_per_frame", "compute_loss",
           "rebuild_with_config", "add_channel_masking", "make_validate",
           "estimate_fbank_cmvn", "estimate_wave_stats"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def rebuild_with_config(model: W2V2Model, **changes: Any) -> W2V2Model:
    """A copy of ``model`` whose config has ``changes`` (e.g. dropouts, SpecAugment time masking), with
    the weights carried over. Needed because dropout rates and the mask embedding are fixed at build
    time. A new ``masked_spec_embed`` (time masking switched on) is freshly initialised."""
    if not changes:
        return model
    new = W2V2Model(model.config.replace(**changes))
    try:
        missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    except RuntimeError as e:  # a shape differs (strict=False only forgives missing/unexpected keys)
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise ValueError(f"config changes {sorted(changes)} change the parameter layout ({first.strip()})") from None
    bad = [k for k in list(missing) + list(unexpected) if k != "masked_spec_embed"]
    if bad:
        raise ValueError(f"config changes {sorted(changes)} change the parameter layout ({bad[:4]})")
    if hasattr(model, "init_report"):
        new.init_report = model.init_report
    return new.train(model.training)


def add_channel_masking(model: W2V2Model, num_masks: int, max_width: int) -> None:
    """SpecAugment channel masks on the front-end features (input of the feature projection), in
    training mode only; a forward pre-hook, so the saved model is unchanged."""
    if num_masks <= 0 or max_width <= 0:
        return

    def hook(module: nn.Module, args: tuple) -> Optional[tuple]:
        if not module.training:
            return None
        x = args[0]
        return (mask_time_channels(x, None, num_time_masks=0, num_channel_masks=num_masks,
                                   max_channel_width=max_width),)

    model.feature_projection.register_forward_pre_hook(hook)


def compute_loss(model: nn.Module, batch: Mapping[str, Any]) -> LossResult:
    """The trainer's loss callable for every task: one forward of the (possibly DDP-wrapped) task."""
    out = model(batch)
    return LossResult(loss=out["loss"], num=out["num"], stats=out["stats"],
                      audio_sec=float(batch["audio_lens"].sum()) / SAMPLE_RATE)


class _TaskBase(nn.Module):
    """What both tasks share: the update counter hook and dropped-utterance accounting."""

    trained_prefix = ""

    def __init__(self) -> None:
        super().__init__()
        self.step_fn: Callable[[], int] = lambda: 10 ** 12  # set to the trainer's update counter
        self.num_dropped: dict[str, int] = {}

    def trained_model(self) -> W2V2Model:
        raise NotImplementedError

    def _note_dropped(self, dropped: dict[str, int], batch: Mapping[str, Any]) -> None:
        for k, n in dropped.items():
            before = self.num_dropped.get(k, 0)
            self.num_dropped[k] = before + n
            if before < 20:
                log.warning("%d utterance(s) with a non-finite %s loss dropped from the batch %s (total %d)",
                            n, k, list(batch.get("cut_ids", []))[:4], before + n)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        res, _ = self.run(batch)
        return {"loss": res.loss, "num": res.num, "stats": res.stats}

    def run(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        raise NotImplementedError


class TeacherTask(_TaskBase):
    """Stage 3: the model trained on the labels (LF-MMI, CTC or both; see the objective's weights)."""

    trained_prefix = "model."

    def __init__(self, model: W2V2Model, objective: DistillObjective) -> None:
        super().__init__()
        if objective.needs_teacher():
            raise ValueError("the teacher task trains on labels only: set the distillation weights to 0")
        self.model = model
        self.objective = objective

    def trained_model(self) -> W2V2Model:
        return self.model

    def run(self, batch: Mapping[str, Any]):
        out = self.model(batch["audio"], batch["audio_lens"])
        res = self.objective(out.scores, out.lengths, step=self.step_fn(), targets=batch["tokens"])
        self._note_dropped(res.dropped, batch)
        return res, out


class TeacherCacheError(RuntimeError):
    """A teacher cache does not match the current teacher/targets, or a file in it is unreadable."""


class TeacherCache:
    """Teacher outputs stored per cut on disk (one ``.pt`` file per cut id, fp16 by default).

    Filled lazily: the first time a batch is seen the teacher runs and each cut's valid frames are
    written; later epochs read them back. ``meta.json`` records the teacher fingerprint and which
    outputs are stored; a cache written for another teacher or other targets is refused. Targets
    are only valid for unperturbed audio: speed perturbation must be off (checked by the entry point).

    Disk cost: 50 frames per second of audio (180,000 per hour) times the values stored per frame
    (the vocabulary for scores, hidden size per distilled layer, CNN width for features) times 2 bytes
    (fp16), plus ~1.6 kB per file (:meth:`bytes_needed`). Given ``values_per_frame``, ``hours`` and
    ``utterances`` of the training data, :meth:`open` logs the cost and refuses a new cache that would
    not fit the free disk, before anything is written.
    """

    FRAMES_PER_SECOND = 50  # wav2vec 2.0 output frames (20 ms)
    FILE_OVERHEAD = 1600  # bytes per torch.save file beyond its tensors (zip container, cut id), measured
    BLOCK = 4096  # files take whole filesystem blocks

    def __init__(self, directory: str | Path, fingerprint: Mapping[str, Any], dtype: torch.dtype = torch.float16,
                 *, values_per_frame: Optional[int] = None, hours: Optional[float] = None,
                 utterances: Optional[int] = None) -> None:
        self.dir = Path(directory)
        self.dtype = dtype
        self.meta = {"format": "distill-teacher-cache-v1", "dtype": str(dtype).replace("torch.", ""),
                     **fingerprint}
        self.values_per_frame, self.hours, self.utterances = values_per_frame, hours, utterances
        self.hits = 0
        self.misses = 0

    def bytes_per_hour(self, values_per_frame: int) -> float:
        """Tensor bytes per hour of audio (without the per-file overhead)."""
        return 3600.0 * self.FRAMES_PER_SECOND * values_per_frame * torch.empty((), dtype=self.dtype).element_size()

    def bytes_needed(self, values_per_frame: int, hours: float, utterances: int) -> int:
        """Disk space of a full cache: each cut's file (its share of the tensor bytes plus the file
        overhead) rounded up to whole filesystem blocks."""
        if utterances <= 0:
            return 0
        per_file = self.bytes_per_hour(values_per_frame) * hours / utterances + self.FILE_OVERHEAD
        return int(utterances * math.ceil(per_file / self.BLOCK) * self.BLOCK)

    def _check_space(self) -> Optional[str]:
        """Log the cache's disk cost; the reason to refuse it (a new cache larger than the free disk), or None."""
        v, h, n = self.values_per_frame, self.hours, self.utterances
        if v is None:
            return None
        if h is None or n is None:
            log.warning("teacher cache %s: %.2f GB per hour of audio (%d values per frame, %s); the size of the "
                        "training data is unknown (cuts.yaml without sizes: re-run stage 1), free disk not checked",
                        self.dir, self.bytes_per_hour(v) / 1e9, v, self.meta["dtype"])
            return None
        need = self.bytes_needed(v, h, n)
        probe = self.dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        new = not (self.dir / "meta.json").exists()
        log.info("teacher cache %s: %.2f GB per hour of audio (%d values per frame, %s) + %.1f kB per file; "
                 "%.1f GB for %.1f h in %d cuts; %.1f GB free%s", self.dir, self.bytes_per_hour(v) / 1e9, v,
                 self.meta["dtype"], self.FILE_OVERHEAD / 1e3, need / 1e9, h, n, free / 1e9,
                 "" if new else " (existing cache: what it already holds is not counted)")
        if new and need > free:
            return (f"teacher cache '{self.dir}' would need {need / 1e9:.1f} GB ({self.bytes_per_hour(v) / 1e9:.2f} GB "
                    f"per hour of audio x {h:.1f} h in {n} cuts: {v} values per frame in {self.meta['dtype']}) but "
                    f"only {free / 1e9:.1f} GB are free on {probe}; set teacher_cache_dir to a larger disk"
                    + (", teacher_cache_dtype: float16" if self.meta["dtype"] != "float16" else "")
                    + " or teacher_cache: false (teacher outputs on the fly)")
        return None

    def open(self) -> None:
        """Check the free disk (see the class docstring), then create or check ``meta.json`` (rank 0
        writes, all ranks check after a barrier)."""
        meta_file = self.dir / "meta.json"
        refusal = du.broadcast_object(self._check_space() if du.is_main() else None)
        if refusal:
            raise TeacherCacheError(refusal)
        if du.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            if not meta_file.exists():
                tmp = meta_file.with_suffix(f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps(self.meta, indent=1, sort_keys=True))
                os.replace(tmp, meta_file)
        du.barrier()
        try:
            old = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TeacherCacheError(f"{meta_file}: unreadable ({e}); delete the cache directory") from None
        if old != json.loads(json.dumps(self.meta)):
            diff = sorted(k for k in set(old) | set(self.meta) if old.get(k) != self.meta.get(k))
            raise TeacherCacheError(
                f"teacher cache '{self.dir}' was written for another teacher or other targets (differs in "
                f"{', '.join(diff)}); delete it or set teacher_cache_dir to another directory")

    def _path(self, cut_id: str) -> Path:
        h = hashlib.sha1(cut_id.encode("utf-8")).hexdigest()
        return self.dir / h[:2] / f"{h[2:20]}.pt"

    def get(self, cut_id: str) -> Optional[dict[str, Tensor]]:
        p = self._path(cut_id)
        if not p.exists():
            return None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated file (killed writer on a filesystem without atomic rename)
            log.warning("teacher cache file %s for cut %s is unreadable (%s); recomputing it", p, cut_id,
                        load_error_detail(e))
            return None
        if obj.get("id") != cut_id:
            raise TeacherCacheError(f"teacher cache file {p} holds cut {obj.get('id')!r}, expected {cut_id!r}")
        return {k: v for k, v in obj.items() if k != "id"}

    def put(self, cut_id: str, entry: dict[str, Tensor]) -> None:
        p = self._path(cut_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        torch.save({"id": cut_id, **{k: v.detach().to("cpu", self.dtype).contiguous() for k, v in entry.items()}},
                   tmp)
        os.replace(tmp, p)


def cache_values_per_frame(teacher: W2V2Model, needs: Mapping[str, Any]) -> int:
    """Values a :class:`TeacherCache` stores per frame for ``needs`` (``DistillObjective.teacher_needs()``)."""
    c = teacher.config
    return ((c.vocab_size if needs.get("scores") else 0) + len(needs.get("hidden") or ()) * c.hidden_size
            + (c.feature_dim if needs.get("features") else 0))


class DistillTask(_TaskBase):
    """Stages 4/5 and the distillation baselines: ``student`` learns from the frozen ``teacher``.

    Args:
        student: the trained model (the exported one).
        teacher: frozen; kept in eval mode whatever ``train()`` is called with; may be None when the
            objective uses labels only (the labels-only baseline).
        objective: the loss with its projections.
        chunks: streaming chunk sizes in frames (0 = full attention); one is drawn per training
            batch, ``chunks[0]`` is used in evaluation and export. Empty: the student does not stream.
        left_chunks, causal_pos_conv: the streaming configuration of the student.
        cache: a :class:`TeacherCache` (already opened) or None for on-the-fly teacher outputs.
    """

    trained_prefix = "student."

    def __init__(self, student: W2V2Model, teacher: Optional[W2V2Model], objective: DistillObjective,
                 chunks: Sequence[int] = (), left_chunks: Optional[int] = None, causal_pos_conv: bool = True,
                 cache: Optional[TeacherCache] = None) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        if objective.needs_teacher() and teacher is None:
            raise ValueError("the objective has distillation terms but no teacher was given")
        if teacher is not None:
            if teacher.config.vocab_size != student.config.vocab_size:
                raise ValueError(f"teacher vocabulary {teacher.config.vocab_size} != student vocabulary "
                                 f"{student.config.vocab_size}")
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.teacher = teacher
        self.chunks = [int(c) for c in chunks]
        self.left_chunks = left_chunks
        self.causal_pos_conv = causal_pos_conv
        self.cache = cache
        self.needs = objective.needs_teacher() and objective.teacher_needs()
        if self.chunks:
            self._set_chunk(self.chunks[0])

    def trained_model(self) -> W2V2Model:
        return self.student

    def train(self, mode: bool = True) -> "DistillTask":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _set_chunk(self, chunk: int) -> None:
        if chunk == self.student.config.chunk_frames and (chunk == 0 or self.student.config.causal_pos_conv
                                                          == self.causal_pos_conv):
            return
        self.student.set_streaming(chunk, self.left_chunks if chunk > 0 else None, self.causal_pos_conv)

    def draw_chunk(self) -> int:
        """The chunk of a training batch: uniform over ``chunks`` from the global torch RNG (which the
        trainer checkpoints, so a resumed run draws the same sequence)."""
        if len(self.chunks) == 1:
            return self.chunks[0]
        return self.chunks[int(torch.randint(len(self.chunks), ()).item())]

    # ---- teacher targets ---------------------------------------------------------------------
    def _teacher_forward(self, wave: Tensor, lens: Tensor, features_only: bool) -> TeacherTargets:
        assert self.teacher is not None
        with torch.no_grad():
            if features_only:
                feats, out_lens = self.teacher.frontend_features(wave, lens)
                return TeacherTargets(lengths=out_lens, features=feats)
            out = self.teacher(wave, lens)
        n = self.needs
        return TeacherTargets(lengths=out.lengths, scores=out.scores if n["scores"] else None,
                              hidden={i: out.hidden_states[i] for i in n["hidden"]},
                              features=out.features if n["features"] else None)

    def _split(self, t: TeacherTargets, b: int) -> dict[str, Tensor]:
        n = int(t.lengths[b])
        entry: dict[str, Tensor] = {}
        if t.scores is not None:
            entry["scores"] = t.scores[b, :n]
        if t.hidden:
            entry["hidden"] = torch.stack([t.hidden[i][b, :n] for i in self.needs["hidden"]])
        if t.features is not None:
            entry["features"] = t.features[b, :n]
        return entry

    def _collate(self, entries: list[dict[str, Tensor]], lengths: Tensor, t_max: int, dtype: torch.dtype,
                 ids: Sequence[str]) -> TeacherTargets:
        dev = lengths.device
        for cid, e, n in zip(ids, entries, lengths.tolist()):
            got = {k: int(v.shape[-2]) for k, v in e.items()}
            if any(g != n for g in got.values()):
                raise TeacherCacheError(f"teacher cache entry of cut {cid} has {got} frames, the audio gives "
                                        f"{n}: the audio changed since the cache was written; delete the cache")

        def pad(key: str, idx: Optional[int] = None) -> Tensor:
            rows = [e[key] if idx is None else e[key][idx] for e in entries]
            out = torch.zeros(len(rows), t_max, *rows[0].shape[1:], dtype=dtype, device=dev)
            for b, r in enumerate(rows):
                out[b, : r.shape[0]] = r.to(dev, dtype)
            return out

        first = entries[0]
        return TeacherTargets(
            lengths=lengths,
            scores=pad("scores") if "scores" in first else None,
            hidden={i: pad("hidden", k) for k, i in enumerate(self.needs["hidden"])} if "hidden" in first else {},
            features=pad("features") if "features" in first else None)

    def teacher_targets(self, batch: Mapping[str, Any], features_only: bool = False) -> TeacherTargets:
        """Teacher outputs for the batch: from the cache when every cut is there, else computed
        (and stored for the missing cuts). The cache is used for training batches only."""
        wave, lens = batch["audio"], batch["audio_lens"]
        if self.cache is None or not self.training or features_only:
            return self._teacher_forward(wave, lens, features_only)
        ids = list(batch["cut_ids"])
        entries = [self.cache.get(c) for c in ids]
        if all(e is not None for e in entries):
            self.cache.hits += len(ids)
            t_max = int(self.student.output_lengths(torch.tensor([wave.shape[1]]))[0])
            dtype = next(self.student.parameters()).dtype
            return self._collate(entries, self.student.output_lengths(lens.long()), t_max, dtype, ids)
        t = self._teacher_forward(wave, lens, False)
        for b, (cid, e) in enumerate(zip(ids, entries)):
            if e is None:
                self.cache.put(cid, self._split(t, b))
                self.cache.misses += 1
        return t

    # ---- the loss ----------------------------------------------------------------------------
    def run(self, batch: Mapping[str, Any]):
        step = self.step_fn()
        cfg = self.objective.cfg
        if self.chunks:
            self._set_chunk(self.draw_chunk() if self.training else self.chunks[0])
        wave, lens = batch["audio"], batch["audio_lens"]
        if step < cfg.feature_only_steps:  # input distillation, phase 1: front-ends only
            t = self.teacher_targets(batch, features_only=True)
            feats, out_lens = self.student.frontend_features(wave, lens)
            res = self.objective(None, out_lens, step=step, student_features=feats, teacher=t)
            return res, None
        w = cfg.weights(step)
        t = None
        if any(w[k] > 0 for k in ("hid", "out", "mmi_kd", "kl", "feat")):
            t = self.teacher_targets(batch)
        out = self.student(wave, lens)
        res = self.objective(out.scores, out.lengths, step=step, student_hidden=out.hidden_states,
                             student_features=out.features, teacher=t, targets=batch["tokens"])
        self._note_dropped(res.dropped, batch)
        return res, out


def _strip_dup(cut_id: str) -> str:
    base, sep, tail = cut_id.rpartition("_dup")
    return base if sep and tail.isdigit() else cut_id


def make_validate(task: _TaskBase, dev_loader: Any, tokenizer: Any, normalize: Optional[str] = None,
                  max_batches: int = 0) -> Callable[[nn.Module], dict[str, float]]:
    """The trainer's validation callback: dev loss per frame (the objective at the current update) and
    greedy-CTC dev WER (``distill.scoring.wer``). Each rank scores its shard; results are gathered."""
    from distill.decode.greedy import ctc_greedy
    from distill.scoring import wer

    def validate(model: nn.Module) -> dict[str, float]:
        loss, num = 0.0, 0.0
        stats: dict[str, float] = {}
        refs: dict[str, str] = {}
        hyps: dict[str, str] = {}
        device = next(task.trained_model().parameters()).device
        from .trainer import move_to_device
        for i, batch in enumerate(dev_loader):
            if max_batches and i >= max_batches:
                break
            batch = move_to_device(batch, device)
            res, out = task.run(batch)
            if torch.isfinite(res.loss):
                loss += float(res.loss)
                num += res.num
                for k, v in res.stats.items():
                    stats[k] = stats.get(k, 0.0) + v
            if out is None:
                out = task.trained_model()(batch["audio"], batch["audio_lens"])
            for cid, text, ids in zip(batch["cut_ids"], batch["texts"], ctc_greedy(out.scores, out.lengths)):
                refs[_strip_dup(cid)] = text
                hyps[_strip_dup(cid)] = tokenizer.decode(ids)
        parts = du.gather_objects({"loss": loss, "num": num, "stats": stats, "refs": refs, "hyps": hyps})
        loss = sum(p["loss"] for p in parts)
        num = sum(p["num"] for p in parts)
        for p in parts[1:]:
            refs.update(p["refs"])
            hyps.update(p["hyps"])
        metrics = {"loss": loss / num if num else float("nan")}
        for p in parts:
            for k, v in p["stats"].items():
                metrics[f"loss_{k}"] = metrics.get(f"loss_{k}", 0.0) + v
        for k in [k for k in metrics if k.startswith("loss_")]:
            metrics[k] = metrics[k] / num if num else float("nan")
        if refs:
            r = wer(refs, hyps, normalize=normalize)
            metrics.update(wer=float(r["wer"]), ref_words=float(r["ref_words"]), utts=float(len(refs)))
        return metrics

    return validate


@torch.no_grad()
def _loader_mean_std(loader: Any, max_batches: int, rows: Callable[[Tensor], Tensor], var_floor: float,
                     what: str) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (float64, per column) of ``rows(valid audio)`` -- a [T, D] tensor
    per utterance -- over up to ``max_batches`` batches of ``loader``."""
    total, sq, count = 0.0, 0.0, 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        for wav, n in zip(batch["audio"], batch["audio_lens"].tolist()):
            x = rows(wav[:n]).double()
            total = total + x.sum(0)
            sq = sq + x.pow(2).sum(0)
            count += x.shape[0]
    if not count:
        raise ValueError(f"{what}: no samples in the training data")
    mean = total / count
    return mean, (sq / count - mean ** 2).clamp(min=var_floor).sqrt()


def estimate_wave_stats(loader: Any, max_batches: int = 20) -> tuple[float, float]:
    """Mean and standard deviation of the valid samples of up to ``max_batches`` training batches: the
    constants of ``wave_norm: fixed`` (a causal stand-in for per-utterance normalisation)."""
    mean, std = _loader_mean_std(loader, max_batches, lambda x: x[:, None], 1e-12, "estimate_wave_stats")
    return float(mean), float(std)


def estimate_fbank_cmvn(model: W2V2Model, loader: Any, max_batches: int = 20) -> tuple[Tensor, Tensor]:
    """Global fbank mean/std over up to ``max_batches`` training batches, written into the Fbank
    front-end's CMVN buffers (they are saved with the model)."""
    fe = model.fbank_frontend
    mean, std = _loader_mean_std(loader, max_batches, lambda x: fe.compute_fbank(x[None]).squeeze(0), 1e-8,
                                 "estimate_fbank_cmvn")
    fe.mean.copy_(mean.to(fe.mean.dtype))
    fe.std.copy_(std.to(fe.std.dtype))
    return fe.mean.clone(), fe.std.clone()


def config_fingerprint(model: W2V2Model, path: str) -> dict[str, Any]:
    """A teacher identity for the cache: path, config and a hash of the weights."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()[:4096])
        h.update(str(tuple(v.shape)).encode())
        h.update(repr(float(v.double().sum())).encode())
    cfg: W2V2Config = model.config
    return {"teacher": str(path), "teacher_config": cfg.to_dict(), "teacher_hash": h.hexdigest()}
