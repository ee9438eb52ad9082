"""The validation callback of a training stage: dev loss per frame and greedy-CTC dev WER of the
trained model, scored on every rank's shard and gathered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from distill.decode.greedy import ctc_greedy
from distill.scoring import wer

from . import distributed as du
from .batches import move_to_device
from .tasks import DistillTask, TeacherTask

__all__ = ["make_validate"]


def _strip_dup(cut_id: str) -> str:
    base, sep, tail = cut_id.rpartition("_dup")
    return base if sep and tail.isdigit() else cut_id


def make_validate(
    task: TeacherTask | DistillTask, dev_loader: Any, tokenizer: Any, normalize: str | None = None, max_batches: int = 0
) -> Callable[[nn.Module], dict[str, float]]:
    """The trainer's validation callback: dev loss per frame (the objective at the current update) and
    greedy-CTC dev WER (``distill.scoring.wer``). Each rank scores its shard; results are gathered."""

    def validate(model: nn.Module) -> dict[str, float]:
        loss, num = 0.0, 0.0
        stats: dict[str, float] = {}
        refs: dict[str, str] = {}
        hyps: dict[str, str] = {}
        device = next(task.trained_model().parameters()).device
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
