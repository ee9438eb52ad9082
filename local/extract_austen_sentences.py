#!/usr/bin/env python3
"""One-time extraction of the demo corpus sentence pool from Jane Austen's six novels.

The novels (public domain; the Project Gutenberg texts) are shipped by Debian's ``r-cran-janeaustenr``
(MIT-licensed packaging) as an R lazy-load database. This script reads that database without R (a
minimal reader of R's XDR serialisation for character vectors), splits the text into sentences,
normalises them for TTS and ASR, keeps the well-formed ones and writes ``local/data/austen_sentences.txt``.
The generator (``make_demo_corpus.py``) only reads the committed file, so a demo run never needs this.

    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb /tmp/ja
    python local/extract_austen_sentences.py /tmp/ja/usr/lib/R/site-library/janeaustenr \
        local/data/austen_sentences.txt

Each output line is one sentence as it is given to the synthesisers: words made only of ASCII letters
and inner apostrophes, separated by single spaces, some followed by one of ``, ; : . ! ?``, ending in
``. ! ?``. Its transcript is the words upper-cased (``make_demo_corpus.transcript``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import re
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

BOOKS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
MIN_WORDS, MAX_WORDS = 4, 20
#: A word must occur at least this often in the accepted sentences of all six novels: rare names and
#: one-off words would make held-out test sentences hard to cover with training text.
MIN_WORD_COUNT = 3

_ABBREVIATIONS = {"Mr.": "Mister", "Mrs.": "Missus", "Dr.": "Doctor", "Esq.": "Esquire"}
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_ALLOWED_CHARS = re.compile(r"[A-Za-z',.;:!? -]*")


# ---- R serialisation (XDR, versions 2 and 3), just what a character-vector data set needs ----------
class _RReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = data, 0, []  # type: bytes, int, list[Any]
        if data[:2] != b"X\n":
            raise ValueError("not an XDR-serialised R object")
        self.pos = 2
        version = self._int()
        self._int(), self._int()  # writer and minimal reader R versions
        if version == 3:
            self.pos += 4 + self._peek_int()  # native encoding name

    def _peek_int(self) -> int:
        return struct.unpack(">i", self.data[self.pos : self.pos + 4])[0]

    def _int(self) -> int:
        value = self._peek_int()
        self.pos += 4
        return value

    def item(self) -> Any:
        flags = self._int()
        sexptype, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if sexptype == 254:  # NILVALUE_SXP
            return None
        if sexptype in (241, 242, 247, 251, 252, 253):  # environments and markers
            return ("special", sexptype)
        if sexptype == 255:  # REFSXP
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if sexptype == 1:  # SYMSXP
            sym = ("symbol", self.item())
            self.refs.append(sym)
            return sym
        if sexptype in (2, 3, 5, 6, 17):  # pairlist-like
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            return ("pair", tag, car, self.item(), attr)
        if sexptype == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            text = self.data[self.pos : self.pos + n].decode("utf-8")
            self.pos += n
            return text
        if sexptype in (10, 13, 14, 16, 19, 20):
            n = self._int()
            if n == -1:
                n = (self._int() << 32) + self._int()
            if sexptype in (10, 13):
                values: Any = list(struct.unpack(f">{n}i", self.data[self.pos : self.pos + 4 * n]))
                self.pos += 4 * n
            elif sexptype == 14:
                values = list(struct.unpack(f">{n}d", self.data[self.pos : self.pos + 8 * n]))
                self.pos += 8 * n
            else:
                values = [self.item() for _ in range(n)]
            attr = self.item() if has_attr else None
            return ("vector", values, _pairlist_to_dict(attr))
        raise ValueError(f"unsupported R object type {sexptype} at byte {self.pos}")


def _pairlist_to_dict(node: Any) -> dict[str, Any]:
    out = {}
    while node is not None and node[0] == "pair":
        out[node[1][1]] = node[2]
        node = node[3]
    return out


def read_lazyload_db(package_dir: Path) -> dict[str, list[str]]:
    """The character vectors of an R package's ``data/Rdata.{rdx,rdb}`` lazy-load database."""
    rdx, rdb = package_dir / "data" / "Rdata.rdx", package_dir / "data" / "Rdata.rdb"
    for f in (rdx, rdb):
        if not f.is_file():
            sys.exit(f"error: {f} not found (expected the janeaustenr R package directory)")
    _, index, index_attr = _RReader(gzip.decompress(rdx.read_bytes())).item()
    variables = index[index_attr["names"][1].index("variables")]
    blob = rdb.read_bytes()
    out = {}
    for name, (_, (offset, length), _) in zip(variables[2]["names"][1], variables[1]):
        chunk = blob[int(offset) : int(offset) + int(length)]
        obj = _RReader(zlib.decompress(chunk[4:])).item()  # 4-byte length, then zlib
        out[name] = [s or "" for s in obj[1]]
    return out


# ---- text to sentences ------------------------------------------------------------------------------
def paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs, each joined into one line."""
    out, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(" ".join(cur))
            cur = []
    return out


def split_sentences(paragraph: str) -> list[str]:
    text = paragraph.replace("_", "").replace('"', " ").replace("--", ", ")
    for abbr, full in _ABBREVIATIONS.items():
        text = re.sub(rf"(?<![A-Za-z]){re.escape(abbr)}", full, text)
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def clean_sentence(raw: str) -> str | None:
    """The TTS form of one raw sentence, or None when it is not usable (see the module docstring)."""
    if not _ALLOWED_CHARS.fullmatch(raw):
        return None  # digits, brackets, symbols
    raw = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", raw)  # to-morrow -> to morrow
    raw = re.sub(r"\s*-+\s*", ", ", raw)
    tokens: list[tuple[str, str]] = []
    for chunk in raw.split():
        m = re.fullmatch(r"([,.;:!?]*)([A-Za-z']+)([,.;:!?]*)", chunk)
        if m is None:
            if re.fullmatch(r"[,.;:!?]+", chunk) and tokens:
                tokens[-1] = (tokens[-1][0], tokens[-1][1] + chunk)
                continue
            return None
        word = m.group(2)
        if not _WORD.fullmatch(word):
            return None  # leading/trailing apostrophe: a quote, or 'tis-style elision
        if sum(c.isupper() for c in word) > 1 or (len(word) == 1 and word not in ("I", "a", "A")):
            return None  # roman numerals, headings, initials
        tokens.append((word, m.group(3)))
    if not MIN_WORDS <= len(tokens) <= MAX_WORDS:
        return None
    parts = []
    for i, (word, punct) in enumerate(tokens):
        mark = next((p for p in ".!?;:," if p in punct), "")  # strongest mark of the cluster
        if i == len(tokens) - 1 and mark not in (".", "!", "?"):
            mark = "."
        parts.append(word + mark)
    sentence = " ".join(parts)
    return sentence[0].upper() + sentence[1:]


def words_of(sentence: str) -> list[str]:
    return [w.upper() for w in _WORD.findall(sentence)]


def extract(books: dict[str, list[str]]) -> list[str]:
    """Distinct, well-formed sentences whose words are all frequent enough, in book order."""
    seen, sentences = set(), []
    for name in BOOKS:
        if name not in books:
            sys.exit(f"error: the R database has no data set {name!r} (has: {', '.join(sorted(books))})")
        for par in paragraphs(books[name]):
            for raw in split_sentences(par):
                s = clean_sentence(raw.strip())
                if s is not None and (key := " ".join(words_of(s))) not in seen:
                    seen.add(key)
                    sentences.append(s)
    counts = collections.Counter(w for s in sentences for w in words_of(s))
    return [s for s in sentences if all(counts[w] >= MIN_WORD_COUNT for w in words_of(s))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package_dir", type=Path, help="the installed/unpacked janeaustenr R package")
    ap.add_argument("out", type=Path, help="sentence file to write")
    args = ap.parse_args()
    sentences = extract(read_lazyload_db(args.package_dir))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(s + "\n" for s in sentences), encoding="ascii")
    vocab = {w for s in sentences for w in words_of(s)}
    n_words = sum(len(words_of(s)) for s in sentences)
    print(f"{args.out}: {len(sentences)} sentences, {n_words} words, vocabulary {len(vocab)}")


if __name__ == "__main__":
    main()
