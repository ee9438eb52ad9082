"""Streaming recognition with an exported chunk step (``streaming.onnx``) and onnxruntime only.

    python docs/examples/onnx_streaming.py --model exp/export/stage2/streaming.onnx \\
        --tokens exp/export/stage2/tokens.txt a.wav b.wav

Needs numpy and onnxruntime (WAV files: 16-bit PCM, 16 kHz, mono, read with the standard library).
Prints partial results on stderr as chunks complete and ``utt-id text`` on stdout, like
``python -m distill.bin.transcribe --streaming`` with the same chunk (greedy CTC). Every state tensor
is described in docs/deploy.md; the sizes come from the file's metadata.
"""

from __future__ import annotations

import argparse
import sys
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort

NP_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


class ChunkStreamer:
    """Feeds audio pieces of any size to the chunk step; keeps the state between calls."""

    def __init__(self, model: str):
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("frontend") != "cnn":
            sys.exit("this example feeds samples: it needs a CNN front-end model")
        self.shift = int(meta["frame_shift_samples"])  # 320 samples (20 ms) per output frame
        self.need = int(meta["chunk_input_samples"])  # chunk_frames * 320 + 80 samples per call
        self.hop = int(meta["chunk_frames"]) * self.shift  # consecutive inputs overlap by 80 samples
        self.field = int(meta["receptive_field_samples"])  # 400 samples make the first frame
        self.state_inputs = self.session.get_inputs()[1:]  # pos_ctx, kv_cache, processed[, wave_stats]
        self.reset()

    def reset(self) -> None:
        """Start a new stream: every state tensor zero, the time axis of a growing cache empty."""
        self.state = {
            i.name: np.zeros([d if isinstance(d, int) else 0 for d in i.shape], NP_DTYPES[i.type])
            for i in self.state_inputs
        }
        self.buf = np.zeros(0, np.float32)

    def _step(self, x: np.ndarray) -> np.ndarray:
        outs = self.session.run(None, {"x": x[None].astype(np.float32), **self.state})
        for i, new in zip(self.state_inputs, outs[1:]):  # outputs: scores, then new_<state> in input order
            self.state[i.name] = new
        return outs[0][0]

    def accept(self, samples: np.ndarray) -> list[np.ndarray]:
        """Add samples; returns the scores [n, V] of the chunks they completed."""
        self.buf = np.concatenate([self.buf, samples.astype(np.float32)])
        out = []
        while len(self.buf) >= self.need:
            out.append(self._step(self.buf[: self.need]))
            self.buf = self.buf[self.hop :]
        return out

    def finalize(self) -> list[np.ndarray]:
        """The last, partial chunk: as many whole frames as the remaining samples make."""
        n = (len(self.buf) - self.field) // self.shift + 1 if len(self.buf) >= self.field else 0
        return [self._step(self.buf[: n * self.shift + self.field - self.shift])] if n > 0 else []


class GreedyText:
    """Greedy CTC over the frames seen so far; the text as ``transcribe`` spells it."""

    def __init__(self, tokens: str):
        self.pieces = [ln.split()[0] for ln in Path(tokens).read_text(encoding="utf-8").splitlines()]
        self.ids: list[int] = []
        self.prev = -1

    def add(self, scores: np.ndarray) -> None:
        for t in scores.argmax(-1).tolist():
            if t != self.prev and t not in (0, 1):  # 0 <blk>, 1 <sos/eos>
                self.ids.append(t)
            self.prev = t

    def text(self) -> str:
        return " ".join("".join(self.pieces[i] for i in self.ids).replace("\u2581", " ").split())


def read_wav(path: str) -> np.ndarray:
    with wave.open(path) as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"{path}: need 16 kHz mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="streaming.onnx (or streaming.int8.onnx)")
    ap.add_argument("--tokens", required=True, help="tokens.txt")
    ap.add_argument("--piece-ms", type=float, default=40.0, help="audio fed per call, as a live source would")
    ap.add_argument("wavs", nargs="+")
    args = ap.parse_args()
    streamer = ChunkStreamer(args.model)
    piece = int(args.piece_ms * 16)
    for path in args.wavs:
        streamer.reset()
        text = GreedyText(args.tokens)
        samples = read_wav(path)
        for start in range(0, len(samples), piece):
            chunks = streamer.accept(samples[start : start + piece])
            for s in chunks:
                text.add(s)
            if chunks:
                print(f"partial {Path(path).stem}: {text.text()}", file=sys.stderr)
        for s in streamer.finalize():
            text.add(s)
        print(f"{Path(path).stem} {text.text()}".rstrip(), flush=True)


if __name__ == "__main__":
    main()
