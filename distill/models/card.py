"""The model card (``README.md``) of an export bundle (:mod:`distill.models.bundle`): what the model is,
its WERs as stage 6 measured them, its chunk and latency, and how to run each file."""

from __future__ import annotations

from typing import Any

__all__ = ["bundle_readme"]


def _wer_table(rows: list[dict[str, Any]], source: str) -> list[str]:
    if not rows:
        return ["WERs: not given (pass `--results exp/results.json`, written by stage 6).", ""]
    sets = sorted({t for r in rows for t in (r.get("wer_by_method") or {})})
    methods = sorted({m for r in rows for w in (r.get("wer_by_method") or {}).values() for m in w})
    head = ["row of results.json", "form", "chunk"] + [f"{t} {m}" for t in sets for m in methods]
    lines = [
        f"WER (%) measured by stage 6 (`{source}`; `greedy`: CTC greedy, `hlg`: WFST one-best "
        "over HLG.fst with the word LM, `hp`: over the token-LM graph):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for r in rows:
        w = r.get("wer_by_method") or {}
        chunk = f"{r['chunk_frames'] * 20} ms" if r.get("chunk_frames") else "full"
        cells = [str(w.get(t, {}).get(m, "-")) for t in sets for m in methods]
        lines.append("| " + " | ".join([r["name"], str(r.get("form")), chunk, *cells]) + " |")
    return lines + [""]


def bundle_readme(card: dict[str, Any]) -> str:
    """The card's markdown text."""
    files = card["files"]
    size = card["sizes_mb"]
    chunk = card.get("chunk_frames")
    left = card.get("left_chunks")
    kind = (
        f"streaming student: chunks of {chunk} frames ({chunk * card['frame_shift_ms']} ms algorithmic latency), "
        f"left context {'all earlier chunks' if left is None else f'{left} chunks'}"
        if chunk
        else "full-context (offline) model"
    )
    lines = [
        f"# {card['name']}",
        "",
        f"A wav2vec 2.0-style CTC model distilled with distillw2v2 ({kind}), exported for deployment from "
        f"`{card['model']}`.",
        "",
        f"- {card['params']:,} parameters; {card['vocab_size']} output tokens (`tokens.txt`, blank `<blk>` = 0); "
        f"one output frame every {card['frame_shift_ms']} ms; 16 kHz mono input",
        f"- front-end: {card['frontend']}; input scaling (`wave_norm`): {card['wave_norm']}",
        "",
    ]
    lines += _wer_table(card.get("results") or [], card.get("results_file") or "results.json")
    lines += ["## Files", "", "| file | what | MB |", "| --- | --- | --- |"]
    what = {
        "offline": "full utterance: `wave [B,S]` float32 in [-1, 1], `lengths [B]` -> `scores [B,T,V]` "
        "(log-probabilities), `out_lengths [B]`",
        "streaming": "one chunk step: `x` then the state in, `scores` then the new state out (docs/deploy.md)",
        "sherpa-onnx": "for `sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc` (one input)",
        "graph": "decoding graph (HLG) and its word table, for WFST decoding",
    }
    for k, fs in files.items():
        for f in fs:
            lines.append(f"| `{f}` | {what[k]} | {size.get(f, '-')} |")
    lines += [""]
    lines += [f"- {n}" for n in card.get("notes", [])]
    lines += [
        "",
        "Every ONNX file carries its facts in `metadata_props` (vocab size, frame shift, input scaling, chunk, "
        "state names and shapes): `onnx.load(f).metadata_props` or onnxruntime's `get_modelmeta()`.",
        "",
        "## Run it",
        "",
        "With onnxruntime (greedy CTC):",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort, soundfile as sf",
        "wave, sr = sf.read('audio.wav', dtype='float32')  # 16 kHz mono",
        "s = ort.InferenceSession('offline.onnx')",
        "scores, n = s.run(None, {'wave': wave[None], 'lengths': np.array([len(wave)])})",
        "ids = scores[0, : n[0]].argmax(-1)",
        "tokens = [line.split()[0] for line in open('tokens.txt', encoding='utf-8')]",
        "keep = [t for i, t in enumerate(ids) if t > 1 and (i == 0 or t != ids[i - 1])]",
        "print(' '.join(''.join(tokens[t] for t in keep).replace('\\u2581', ' ').split()))",
        "```",
        "",
    ]
    if "sherpa-onnx" in files:
        lines += [
            "With sherpa-onnx (`pip install sherpa-onnx`):",
            "",
            "```python",
            "import sherpa_onnx, soundfile as sf",
            "r = sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc(",
            "    model='sherpa-onnx/model.onnx', tokens='sherpa-onnx/tokens.txt')",
            "wave, sr = sf.read('audio.wav', dtype='float32')",
            "st = r.create_stream(); st.accept_waveform(sr, wave); r.decode_stream(st)",
            "print(' '.join(st.result.text.split()))",
            "```",
            "",
            f"Input scaling under sherpa-onnx: {card['sherpa_scaling']}.",
            "",
        ]
    if "streaming" in files:
        lines += [
            "Streaming with onnxruntime only (state in, state out; every state tensor is described in "
            "docs/deploy.md of distillw2v2):",
            "",
            "```sh",
            "python docs/examples/onnx_streaming.py --model streaming.onnx --tokens tokens.txt audio.wav",
            "```",
            "",
        ]
    if "graph" in files:
        lines += [
            "With the decoding graph (distillw2v2 installed): `python -m distill.bin.transcribe --model MODEL_DIR "
            "--graph HLG.fst --words words.txt audio.wav`.",
            "",
        ]
    if card.get("command"):
        lines += ["Made with:", "", "```sh", card["command"].strip(), "```", ""]
    return "\n".join(lines)
