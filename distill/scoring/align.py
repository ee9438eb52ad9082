"""Word alignments: sclite's weighted DP (exact tie-breaking) and plain Levenshtein (via kaldialign).

An alignment is a list of ``(ref_word, hyp_word)`` pairs in order; ``None`` on the reference side is an
insertion, ``None`` on the hypothesis side a deletion, two different words a substitution.

sclite (``sclite -r ref trn -h hyp trn``, SCTK 2.10) aligns a reference and a hypothesis word chain
with costs correct 0, substitution 4, insertion 3, deletion 3. In each cell it keeps the
substitution/correct move when it is no worse than both others, else the deletion when strictly
cheaper than the insertion, else the insertion; the backtrace starts from the end of both chains.
Among equal-cost alignments this choice decides the ins/del/sub split, so a different tie-break
(kaldialign's ``sclite_mode``, for one) can report other counts than sclite on tie-heavy inputs.
:func:`sclite_align` reimplements that rule; ``tests/test_scoring_sclite.py`` checks it against the
sclite binary.
"""

from __future__ import annotations

from collections.abc import Sequence

import kaldialign

__all__ = ["Alignment", "sclite_align", "levenshtein_align", "ascii_lower", "count_edits"]

Alignment = list[tuple[str | None, str | None]]

# sclite folds case with C tolower(): ASCII letters only, also under `-e utf-8` (checked on SCTK 2.10).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_SUB, _DEL, _INS = 0, 1, 2
_COST_SUB, _COST_INDEL = 4, 3


def ascii_lower(word: str) -> str:
    """Lower-case ASCII letters only, as sclite does without ``-s``; other characters are kept."""
    return word.translate(_ASCII_LOWER)


def _sclite_ops(ref: Sequence[str], hyp: Sequence[str]) -> list[int]:
    """Edit operations (``_SUB`` covers correct) of sclite's alignment of two token sequences."""
    n, m = len(ref), len(hyp)
    if n == 0:
        return [_INS] * m
    if m == 0:
        return [_DEL] * n
    # back[a][b] holds the move into cell (a, b); row 0 / column 0 are all insertions / deletions.
    back: list[bytearray] = [bytearray([_INS]) * (m + 1)]
    prev = list(range(0, _COST_INDEL * (m + 1), _COST_INDEL))
    for a in range(1, n + 1):
        rw = ref[a - 1]
        bk = bytearray(m + 1)
        bk[0] = _DEL
        c = prev[0] + _COST_INDEL
        cur = [c]
        for b, (hw, diag, up) in enumerate(zip(hyp, prev, prev[1:]), start=1):
            s = diag if hw == rw else diag + _COST_SUB
            d = up + _COST_INDEL
            i = c + _COST_INDEL
            if s <= d and s <= i:
                c = s
            elif d < i:
                c = d
                bk[b] = _DEL
            else:
                c = i
                bk[b] = _INS
            cur.append(c)
        back.append(bk)
        prev = cur
    ops: list[int] = []
    a, b = n, m
    while a > 0 or b > 0:
        op = back[a][b] if a > 0 else _INS
        ops.append(op)
        if op == _SUB:
            a -= 1
            b -= 1
        elif op == _DEL:
            a -= 1
        else:
            b -= 1
    ops.reverse()
    return ops


def _apply_ops(ref: Sequence[str], hyp: Sequence[str], ops: Sequence[int]) -> Alignment:
    ali: Alignment = []
    i = j = 0
    for op in ops:
        if op == _SUB:
            ali.append((ref[i], hyp[j]))
            i += 1
            j += 1
        elif op == _DEL:
            ali.append((ref[i], None))
            i += 1
        else:
            ali.append((None, hyp[j]))
            j += 1
    return ali


def _prefix_ops(ref: Sequence[str], hyp: Sequence[str], a: int, b: int) -> list[int]:
    """sclite's backtrace from cell (a, b) to (0, 0) when ref[:min(a, b)] == hyp[:min(a, b)].

    There the cell costs are known in closed form, D[i][j] = 3 * |i - j|, so sclite's rule reduces to:
    take the diagonal when its two words are equal, else insert (j > i) or delete (i > j).
    """
    ops: list[int] = []
    while a > 0 or b > 0:
        if a > 0 and b > 0 and ref[a - 1] == hyp[b - 1]:
            ops.append(_SUB)
            a -= 1
            b -= 1
        elif b > a:
            ops.append(_INS)
            b -= 1
        else:
            ops.append(_DEL)
            a -= 1
    ops.reverse()
    return ops


def _sclite_ops_trimmed(ref: Sequence[str], hyp: Sequence[str]) -> list[int]:
    """:func:`_sclite_ops` without running the DP over a common prefix and suffix (same result, faster).

    Suffix: at the end cell sclite keeps the diagonal when the last words are equal (it is never
    worse), and earlier cells depend only on the prefixes, so a common suffix is always matched.
    Prefix of length p: an optimal alignment matches it, so cells (i, j) with i, j >= p have the
    costs and choices of the trimmed problem. Where the trimmed backtrace runs along its first row
    (column), the full one is at (p, p + k) (or (p + k, p)) and continues by :func:`_prefix_ops`.
    """
    n, m = len(ref), len(hyp)
    q = 0
    while q < n and q < m and ref[n - 1 - q] == hyp[m - 1 - q]:
        q += 1
    n, m = n - q, m - q
    p = 0
    while p < n and p < m and ref[p] == hyp[p]:
        p += 1
    if p == 0:
        ops = _sclite_ops(ref[:n], hyp[:m])
    else:
        mid = _sclite_ops(ref[p:n], hyp[p:m])
        k = 0
        if mid and mid[0] != _SUB:
            while k < len(mid) and mid[k] == mid[0]:
                k += 1
        end = (p, p + k) if k and mid[0] == _INS else (p + k, p)
        ops = _prefix_ops(ref, hyp, *end) + mid[k:]
    return ops + [_SUB] * q


def sclite_align(ref: Sequence[str], hyp: Sequence[str], case_sensitive: bool = False) -> Alignment:
    """Align word lists exactly as sclite does (costs 4/3/3, sclite's tie-breaking).

    Words are compared after :func:`ascii_lower` unless ``case_sensitive`` (sclite's ``-s``); the
    returned pairs carry the original words. A pair of words that differ only in ASCII case is a
    correct pair when ``case_sensitive`` is false.
    """
    ref, hyp = list(ref), list(hyp)
    if ref == hyp:  # the only zero-cost alignment
        return list(zip(ref, hyp))
    if case_sensitive:
        ops = _sclite_ops_trimmed(ref, hyp)
    else:
        t = _ASCII_LOWER
        ops = _sclite_ops_trimmed([w.translate(t) for w in ref], [w.translate(t) for w in hyp])
    return _apply_ops(ref, hyp, ops)


def levenshtein_align(ref: Sequence[str], hyp: Sequence[str], case_sensitive: bool = True) -> Alignment:
    """A minimum-edit-distance alignment (unit costs, as Kaldi's ``compute-wer``), by kaldialign.

    The total number of errors is the Levenshtein distance; how it splits into ins/del/sub among
    equally short alignments is kaldialign's choice.
    """
    ref, hyp = list(ref), list(hyp)
    if ref == hyp:
        return list(zip(ref, hyp))
    rk = ref if case_sensitive else [ascii_lower(w) for w in ref]
    hk = hyp if case_sensitive else [ascii_lower(w) for w in hyp]
    # Align integer ids (with -1 as epsilon) so no word can collide with the epsilon symbol.
    ids: dict[str, int] = {}
    ri = [ids.setdefault(w, len(ids)) for w in rk]
    hi = [ids.setdefault(w, len(ids)) for w in hk]
    pairs = kaldialign.align(ri, hi, -1)
    ops = [_INS if r == -1 else _DEL if h == -1 else _SUB for r, h in pairs]
    return _apply_ops(ref, hyp, ops)


def count_edits(ali: Alignment, case_sensitive: bool = True) -> tuple[int, int, int, int]:
    """``(corr, sub, ins, del)`` of an alignment; words are compared as the aligner compared them."""
    corr = sub = ins = dele = 0
    for r, h in ali:
        if r is None:
            ins += 1
        elif h is None:
            dele += 1
        elif r == h or (not case_sensitive and ascii_lower(r) == ascii_lower(h)):
            corr += 1
        else:
            sub += 1
    return corr, sub, ins, dele
