"""Back-off n-gram language models over arbitrary string symbols (tokens or words): estimation with
interpolated modified Kneser-Ney or Witten-Bell smoothing, count pruning, and an ARPA writer/reader.

The same code builds the token LM P of the LF-MMI denominator graph and word LMs for decoding.

Estimation (Chen & Goodman 1998, "interpolated modified Kneser-Ney"):

* sentences are padded with ``<s>`` (context only) and ``</s>`` (predicted);
* the highest order uses raw counts, lower orders use continuation counts (number of distinct left
  neighbours), except n-grams that start with ``<s>``, which cannot be extended to the left and keep
  their raw counts;
* three discounts D1, D2, D3+ per order from the counts of counts n1..n4,
  ``Y = n1/(n1+2 n2)``, ``Dk = k - (k+1) Y n_{k+1}/n_k``; where the data are too small for that formula
  (a zero count of counts or a discount outside (0, k]) the order falls back to one discount ``Y``
  (or 0.5);
* the unigram distribution is interpolated with the uniform distribution over the vocabulary, so every
  vocabulary symbol, seen or not, gets a non-zero probability.

Witten-Bell: ``p(w|h) = (c(hw) + N1+(h.) p(w|h')) / (c(h) + N1+(h.))`` with raw counts, the unigram
again interpolated with the uniform distribution.

In the ARPA file each listed n-gram carries its interpolated probability and each history the back-off
weight that makes its distribution sum to one under the usual back-off reading.
``min_count`` prunes n-grams of order >= 2 seen fewer times; their mass then goes through the back-off
weight, recomputed so that every history still normalises.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import kaldifst

__all__ = ["BOS", "EOS", "NgramLM", "estimate_ngram"]

BOS = "<s>"
EOS = "</s>"
_LOG10_ZERO = -99.0  # ARPA convention for the probability of <s>

Smoothing = Literal["kneser_ney", "witten_bell"]


class NgramLM:
    """A back-off n-gram model as in an ARPA file.

    ``logprob[n-1]`` maps each listed n-gram (a tuple of n symbols) to ``log10 p(last | rest)`` and
    ``backoff[n-1]`` maps n-grams used as histories to their ``log10`` back-off weight (absent = 0).
    """

    def __init__(
        self, order: int, logprob: list[dict[tuple[str, ...], float]], backoff: list[dict[tuple[str, ...], float]]
    ) -> None:
        if order < 1 or len(logprob) != order or len(backoff) != order:
            raise ValueError(f"NgramLM: order {order} does not match {len(logprob)} probability tables")
        self.order = order
        self.logprob = logprob
        self.backoff = backoff

    @property
    def vocab(self) -> list[str]:
        """Predicted symbols: every unigram except ``<s>`` (so ``</s>`` is included)."""
        return sorted(w for (w,) in self.logprob[0] if w != BOS)

    def log10prob(self, word: str, history: Sequence[str] = ()) -> float:
        """``log10 p(word | history)`` under the ARPA back-off reading (``-inf`` for an unknown word)."""
        h = tuple(history)[-(self.order - 1) :] if self.order > 1 else ()
        acc = 0.0
        while True:
            p = self.logprob[len(h)].get(h + (word,))
            if p is not None:
                return acc + p
            if not h:
                return float("-inf")
            acc += self.backoff[len(h) - 1].get(h, 0.0)
            h = h[1:]

    def histories(self) -> list[tuple[str, ...]]:
        """Every context the model distinguishes: the empty one and each listed n-gram of order < N
        that can be followed (it does not end in ``</s>``)."""
        out: list[tuple[str, ...]] = [()]
        for n in range(1, self.order):
            out.extend(g for g in self.logprob[n - 1] if g[-1] != EOS)
        return out

    # ------------------------------------------------------------------ ARPA
    def write_arpa(self, path: str | Path) -> None:
        """Write the model as an ARPA file (sorted, log10 values with 7 decimals)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(self.logprob[n - 1])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                bows = self.backoff[n - 1]
                for g in sorted(self.logprob[n - 1]):
                    line = f"{self.logprob[n - 1][g]:.7f}\t{' '.join(g)}"
                    if g in bows:
                        line += f"\t{bows[g]:.7f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")

    @classmethod
    def read_arpa(cls, path: str | Path) -> NgramLM:
        """Read an ARPA file; malformed lines raise ValueError naming the file and line."""
        p = Path(path)
        counts: dict[int, int] = {}
        logprob: list[dict] = []
        backoff: list[dict] = []
        section = None
        with open(p, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = "data"
                    continue
                if line == "\\end\\":
                    break
                if line.startswith("\\") and line.endswith("-grams:"):
                    try:
                        section = int(line[1:-7])
                    except ValueError:
                        raise ValueError(f"{p}:{lineno}: bad section header {line!r}") from None
                    while len(logprob) < section:
                        logprob.append({})
                        backoff.append({})
                    continue
                if section == "data":
                    if not line.startswith("ngram ") or "=" not in line:
                        raise ValueError(f"{p}:{lineno}: expected 'ngram N=COUNT', got {line!r}")
                    n, c = line[6:].split("=")
                    counts[int(n)] = int(c)
                    continue
                if not isinstance(section, int):
                    raise ValueError(f"{p}:{lineno}: text outside any section: {line!r}")
                parts = line.split()
                n = section
                if len(parts) not in (n + 1, n + 2):
                    raise ValueError(f"{p}:{lineno}: expected {n} symbols and 1-2 numbers, got {line!r}")
                try:
                    lp = float(parts[0])
                    bow = float(parts[n + 1]) if len(parts) == n + 2 else None
                except ValueError:
                    raise ValueError(f"{p}:{lineno}: bad number in {line!r}") from None
                g = tuple(parts[1 : n + 1])
                logprob[n - 1][g] = lp
                if bow is not None:
                    backoff[n - 1][g] = bow
        if not logprob:
            raise ValueError(f"{p}: no n-gram sections found")
        for n, c in counts.items():
            if n > len(logprob) or len(logprob[n - 1]) != c:
                got = len(logprob[n - 1]) if n <= len(logprob) else 0
                raise ValueError(f"{p}: header says {c} {n}-grams, found {got}")
        return cls(len(logprob), logprob, backoff)


def _discounts(adjusted: Iterable[int]) -> tuple[float, float, float]:
    """Modified-KN discounts (D1, D2, D3+) from counts of counts, with a small-data fallback."""
    coc = Counter(c for c in adjusted if 1 <= c <= 4)
    n1, n2, n3, n4 = (coc.get(k, 0) for k in (1, 2, 3, 4))
    if n1 == 0 or n2 == 0:
        return (0.5, 0.5, 0.5)
    y = n1 / (n1 + 2 * n2)
    if n3 == 0 or n4 == 0:
        return (y, y, y)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if all(0 < dk <= k + 1 for k, dk in enumerate(d)) and all(math.isfinite(dk) for dk in d):
        return d
    return (y, y, y)


def _count(sentences: Iterable[Sequence[str]], order: int, vocab: set[str] | None) -> list[Counter]:
    """n-gram counts of every order in one pass over ``sentences`` (only the counts are kept, so a
    corpus of millions of sentences may be streamed); ``<s>`` is counted as context only."""
    counts = [Counter() for _ in range(order)]
    reserved = {BOS, EOS}
    for i_sent, sent in enumerate(sentences):
        if not reserved.isdisjoint(sent):
            w = next(w for w in sent if w in reserved)
            raise ValueError(f"sentence {i_sent}: contains the reserved symbol {w!r}")
        if vocab is not None and not vocab.issuperset(sent):
            w = next(w for w in sent if w not in vocab)
            raise ValueError(f"sentence {i_sent}: symbol {w!r} is not in the vocabulary")
        toks = [BOS, *sent, EOS]
        counts[0].update(zip(toks[1:]))
        for n in range(2, order + 1):  # every window of n symbols (they all end after <s>)
            counts[n - 1].update(zip(*(toks[k:] for k in range(n))))
    return counts


def estimate_ngram(
    sentences: Iterable[Sequence[str]],
    order: int = 2,
    vocab: Sequence[str] | None = None,
    smoothing: Smoothing = "kneser_ney",
    min_count: int = 1,
) -> NgramLM:
    """Estimate a back-off n-gram model (see the module docstring for the method).

    ``vocab`` lists the symbols the model must predict (all get a non-zero probability, seen or not);
    by default the symbols seen in ``sentences``. A symbol outside ``vocab`` raises ValueError.
    ``min_count`` (>= 1) drops n-grams of order >= 2 seen fewer times.
    """
    if order < 1:
        raise ValueError(f"n-gram order must be >= 1, got {order}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if smoothing not in ("kneser_ney", "witten_bell"):
        raise ValueError(f"unknown smoothing {smoothing!r} (use 'kneser_ney' or 'witten_bell')")
    vset = None if vocab is None else set(vocab)
    if vset is not None and (BOS in vset or EOS in vset):
        raise ValueError(f"the vocabulary must not contain {BOS} or {EOS} (they are added)")
    counts = _count(sentences, order, vset)
    if vset is None:
        vset = {g[0] for g in counts[0]} - {EOS}
    words = sorted(vset) + [EOS]
    if smoothing == "kneser_ney":
        adj = [dict(c) for c in counts]
        for n in range(1, order):  # order n uses continuation counts from order n + 1
            cont: Counter = Counter(g[1:] for g in counts[n])
            adj[n - 1] = {g: (c if g[0] == BOS else cont[g]) for g, c in counts[n - 1].items()}
    else:
        adj = [dict(c) for c in counts]

    probs: list[dict[tuple[str, ...], float]] = []
    gammas: list[dict[tuple[str, ...], float]] = []
    # unigrams, interpolated with the uniform distribution over the vocabulary
    a1 = {(w,): adj[0].get((w,), 0) for w in words}
    tot = sum(a1.values())
    if tot == 0:
        p1 = {g: 1.0 / len(words) for g in a1}
    elif smoothing == "kneser_ney":
        d = _discounts(a1.values())
        disc = {g: min(d[min(c, 3) - 1], c) if c > 0 else 0.0 for g, c in a1.items()}
        gamma = sum(disc.values()) / tot
        p1 = {g: (c - disc[g]) / tot + gamma / len(words) for g, c in a1.items()}
    else:
        types = sum(1 for c in a1.values() if c > 0)
        p1 = {g: (c + types / len(words)) / (tot + types) for g, c in a1.items()}
    probs.append(p1)
    gammas.append({})
    for n in range(2, order + 1):
        by_hist: dict[tuple[str, ...], list[tuple[str, ...]]] = defaultdict(list)
        for g in adj[n - 1]:
            by_hist[g[:-1]].append(g)
        d = _discounts(adj[n - 1].values()) if smoothing == "kneser_ney" else None
        pn: dict[tuple[str, ...], float] = {}
        gn: dict[tuple[str, ...], float] = {}
        for h, gs in by_hist.items():
            cs = [adj[n - 1][g] for g in gs]
            tot = sum(cs)
            if d is not None:
                disc = [min(d[min(c, 3) - 1], c) for c in cs]
                gamma = sum(disc) / tot
                for g, c, dc in zip(gs, cs, disc):
                    pn[g] = (c - dc) / tot + gamma * probs[n - 2][g[1:]]
            else:
                types = len(gs)
                gamma = types / (tot + types)
                for g, c in zip(gs, cs):
                    pn[g] = (c + types * probs[n - 2][g[1:]]) / (tot + types)
            gn[h] = gamma
        probs.append(pn)
        gammas.append(gn)

    # prune, then write explicit log10 probabilities and normalising back-off weights
    pruned_hist: set[tuple[str, ...]] = set()
    if min_count > 1:
        for n in range(2, order + 1):
            for g in [g for g in probs[n - 1] if counts[n - 1][g] < min_count]:
                del probs[n - 1][g]
                pruned_hist.add(g[:-1])
    logprob = [{g: math.log10(p) for g, p in pn.items()} for pn in probs]
    logprob[0][(BOS,)] = _LOG10_ZERO
    backoff: list[dict[tuple[str, ...], float]] = [{} for _ in range(order)]
    lm = NgramLM(order, logprob, backoff)
    for n in range(2, order + 1):
        listed: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for g in logprob[n - 1]:
            listed[g[:-1]].append(g[-1])
        for h, ws in listed.items():
            if h not in pruned_hist and h in gammas[n - 1]:
                bow = gammas[n - 1][h]
            else:  # exact renormalisation of what the pruned n-grams left to the back-off
                num = 1.0 - sum(10 ** logprob[n - 1][h + (w,)] for w in ws)
                den = 1.0 - sum(10 ** lm.log10prob(w, h[1:]) for w in ws)
                bow = num / den if den > 1e-12 and num > 0 else 1.0
            backoff[n - 2][h] = math.log10(bow) if bow > 0 else _LOG10_ZERO
    return lm


_ARPA2FST = (
    "import sys, kaldilm\n"
    "arpa, out, syms, order = sys.argv[1:5]\n"
    "kaldilm.arpa2fst(arpa, output_fst=out, disambig_symbol='#0', read_symbol_table=syms, max_order=int(order))\n"
)


def arpa_to_fst(arpa: str | Path, symbol_table: str | Path, max_order: int | None = None) -> Any:
    """An ARPA n-gram LM as a kaldifst FST, converted by ``kaldilm.arpa2fst``: back-off arcs ``#0:eps``,
    ``<s>``/``</s>`` as epsilon, costs ``-ln p``; n-grams with symbols outside ``symbol_table`` are skipped.

    kaldilm aborts the whole process on malformed input, so it runs in a child process; a failure
    raises ValueError with its log.
    """
    if not Path(arpa).is_file():
        raise ValueError(f"ARPA file '{arpa}' does not exist")
    if not Path(symbol_table).is_file():
        raise ValueError(f"symbol table '{symbol_table}' does not exist")
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "G.fst"
        proc = subprocess.run(
            [sys.executable, "-c", _ARPA2FST, str(arpa), str(out), str(symbol_table), str(max_order or -1)],
            capture_output=True,
        )
        if proc.returncode != 0 or not out.is_file():
            err = proc.stderr.decode("utf-8", "replace")
            raise ValueError(
                f"kaldilm could not convert the ARPA file '{arpa}' (status {proc.returncode}):\n{err[-2000:]}"
            )
        return kaldifst.StdVectorFst.read(str(out))
