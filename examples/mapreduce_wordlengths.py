"""Your own MapReduce job: how long are the words, by first letter?

A job is a mapper, an optional combiner and a reducer, plain Python functions; they travel
to the nodes by value, so this file need not be installed anywhere. Run it with

    fogwheel mapreduce run examples/mapreduce_wordlengths.py:job examples/pydocs.txt --local 2

or from Python:

    from fogwheel import Client
    from fogwheel.mapreduce import run
    from mapreduce_wordlengths import job

    with Client() as fog:
        result = run(fog, job, ["examples/pydocs.txt"], out="lengths/")

Every output line is `letter<TAB>[words, letters, mean length]`.
"""

from __future__ import annotations

from collections.abc import Iterator

from fogwheel.mapreduce import MapReduce


def mapper(line: str) -> Iterator[tuple[str, tuple[int, int]]]:
    """Each word of a line as (its first letter, (1 word, its length))."""
    for word in line.split():
        word = word.strip(".,;:!?\"'()[]").lower()
        if word and word[0].isalpha():
            yield word[0], (1, len(word))


def combiner(letter: str, pairs: list[tuple[int, int]]) -> tuple[int, int]:
    """Sum the words and letters of one map task before they leave its node."""
    return sum(n for n, _ in pairs), sum(size for _, size in pairs)


def reducer(letter: str, pairs: list[tuple[int, int]]) -> list[float]:
    """All map tasks' sums for a letter, and the mean word length."""
    words, letters = combiner(letter, pairs)
    return [words, letters, round(letters / words, 3)]


job = MapReduce(mapper, reducer, combiner, name="word lengths")
