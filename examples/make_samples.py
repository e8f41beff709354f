"""Make the sample data the README's examples use, deterministically.

    python examples/make_samples.py          # rewrites examples/pydocs.txt, words.txt, genome.fa
    python examples/make_samples.py --check  # exits 1 if a shipped file differs from what it makes

- `pydocs.txt`: the prose of the Python Language Reference topics that `help()` shows
  (`pydoc_data.topics`, part of CPython, under the Python Software Foundation License Version 2,
  https://docs.python.org/3/license.html, which permits redistribution with its notice kept:
  "Copyright (c) 2001 Python Software Foundation; All Rights Reserved"). It is the same text
  `fogwheel train` learns from (fogwheel.workloads.corpus), taken from Python 3.11; another
  Python version makes a slightly different file, so `--check` compares it (and words.txt)
  only on 3.11.
- `words.txt`: 2,000 distinct words of pydocs.txt, one a line, in a shuffled order (seed 11),
  for `fogwheel run -- sort`.
- `genome.fa`: a made-up genome (seed 2026): three chromosomes of 100,000 uniformly random
  bases, with 40 copies of a few 500-base repeats pasted in, so that some k-mers occur more
  than once (as in a real genome), 60 bases a line. It is no organism's DNA.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEPARATOR = b"\n\n"


def pydocs() -> bytes:
    """The pydoc topics in sorted key order, a blank line between (as corpus.load_corpus)."""
    from pydoc_data.topics import topics

    return SEPARATOR.join(topics[key].strip("\n").encode() for key in sorted(topics)) + b"\n"


def words(text: bytes, count: int = 2000, seed: int = 11) -> bytes:
    distinct = sorted(set(re.findall(rb"[A-Za-z]{3,}", text)))
    random.Random(seed).shuffle(distinct)
    return b"".join(w + b"\n" for w in distinct[:count])


def genome(seed: int = 2026, chromosomes: int = 3, length: int = 100_000) -> bytes:
    rng = random.Random(seed)
    repeats = ["".join(rng.choice("ACGT") for _ in range(500)) for _ in range(4)]
    lines: list[str] = []
    for c in range(1, chromosomes + 1):
        seq = list(rng.choice("ACGT") for _ in range(length))
        for _ in range(40 // chromosomes + 1):
            repeat = rng.choice(repeats)
            at = rng.randrange(0, length - len(repeat))
            seq[at : at + len(repeat)] = repeat
        bases = "".join(seq)
        lines.append(f">chr{c} made-up sequence, seed {seed}")
        lines.extend(bases[i : i + 60] for i in range(0, len(bases), 60))
    return ("\n".join(lines) + "\n").encode()


def samples() -> dict[str, bytes]:
    text = pydocs()
    return {"pydocs.txt": text, "words.txt": words(text), "genome.fa": genome()}


def main(argv: list[str]) -> int:
    made = samples()
    if "--check" in argv:
        if sys.version_info[:2] != (3, 11):
            made.pop("pydocs.txt")  # another Python's topics differ a little,
            made.pop("words.txt")  # and so do the words drawn from them
        stale = [name for name, data in made.items() if (HERE / name).read_bytes() != data]
        for name in stale:
            print(f"examples/{name} differs from what make_samples.py makes", file=sys.stderr)
        return 1 if stale else 0
    for name, data in made.items():
        (HERE / name).write_bytes(data)
        print(f"wrote examples/{name} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
