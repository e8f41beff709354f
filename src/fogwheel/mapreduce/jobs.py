"""What a MapReduce job does on the nodes: split, map (with a combiner), partition, reduce.

A job is an object with four methods, pickled once and shipped with every task of its job:

- `splits(paths, split_bytes)` (on the client) yields the input in pieces of about
  `split_bytes`, each a self-contained bytes object (whole lines, whole records);
- `map_split(data, partitions)` (on a node) maps one split and returns one payload a
  partition: the combined map output whose keys hash to that partition;
- `reduce_parts(paths)` (on a node) merges the payloads of one partition, from every map
  task, into the bytes of one output file;
- `output` says whether the outputs are a directory of `part-NNNNN` files ("dir") or, when the
  partitions are ranges of one sorted key space, one file concatenated in partition order
  ("file").

`MapReduce(mapper, reducer, combiner)` builds a job from per-record Python functions, the way
Hadoop Streaming and Dask bags do; `WordCount` and `Grep` are built in and map whole splits
at the speed of `bytes.split` and `re.finditer`; `workloads.kmer.KmerJob` counts k-mers with
numpy. Map payloads are decoded with a plain-data unpickler (`core.compare.plain_loads`):
a node never runs code that arrived as another node's output.
"""

from __future__ import annotations

import os
import pickle
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fogwheel.core.compare import plain_loads

Pair = tuple[Any, Any]
PAYLOAD_PROTOCOL = 5


# -- splitting (client side) ------------------------------------------------------------------


def line_splits(paths: Sequence[str | os.PathLike[str]], split_bytes: int) -> Iterator[bytes]:
    """Cut the files into pieces of about `split_bytes` that end at a newline (a line is never
    cut in two; a line longer than a split makes a longer split). Files are read one piece at a
    time, never whole."""
    if split_bytes < 1:
        raise ValueError(f"split size must be positive, not {split_bytes}")
    for path in paths:
        with open(path, "rb") as f:
            carry = b""
            while True:
                chunk = f.read(split_bytes)
                if not chunk:
                    if carry:
                        yield carry if carry.endswith(b"\n") else carry + b"\n"
                    break
                data = carry + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                piece, carry = data[: cut + 1], data[cut + 1 :]
                if len(piece) >= split_bytes // 2 or not carry:
                    yield piece
                else:  # a tiny piece: keep it with the next one
                    carry = piece + carry


def partition_of(key: Any, partitions: int) -> int:
    """A stable hash partition of `key` (the same in every process, unlike `hash()`, which
    Python salts per process for strings and bytes)."""
    if isinstance(key, bytes):
        h = zlib.crc32(key)
    elif isinstance(key, str):
        h = zlib.crc32(key.encode("utf-8", "surrogatepass"))
    elif isinstance(key, bool | int):
        h = (int(key) * 0x9E3779B97F4A7C15) >> 16
    else:
        h = zlib.crc32(pickle.dumps(key, protocol=4))
    return h % partitions


def _as_text(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _sorted_items(d: dict[Any, Any]) -> list[Pair]:
    try:
        return sorted(d.items())
    except TypeError:  # keys of mixed types: keep them in the order they came
        return list(d.items())


def tsv_lines(pairs: Iterable[Pair]) -> bytes:
    """`key<TAB>value` lines, UTF-8."""
    return "".join(f"{_as_text(k)}\t{_as_text(v)}\n" for k, v in pairs).encode()


# -- the interface ----------------------------------------------------------------------------


class Job:
    """The base of every job; subclasses say how to map and reduce."""

    name = "mapreduce"
    output = "dir"  # "dir": part files; "file": partitions are sorted ranges, concatenated
    memory_mb = 256  # what one task may add to its process

    def splits(self, paths: Sequence[str | os.PathLike[str]], split_bytes: int) -> Iterator[bytes]:
        return line_splits(paths, split_bytes)

    def map_split(self, data: bytes, partitions: int) -> list[bytes]:
        raise NotImplementedError

    def reduce_parts(self, paths: Sequence[Path]) -> bytes:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def suggest_partitions(self, input_bytes: int, slots: int) -> int:
        """How many reduce tasks when the caller does not say: one a slot, at least two."""
        return max(2, slots)


class MapReduce(Job):
    """A job of per-record Python functions.

    - `mapper(line)` is called on every line of the input (a `str`, without its newline) and
      yields `(key, value)` pairs;
    - `combiner(key, values)`, if given, folds one map task's values of a key into one value
      before they leave the node (it must be associative, like a sum);
    - `reducer(key, values)` folds all values of a key, from every map task, into the value
      written to the output as `key<TAB>value`, keys sorted within each part file.

    Keys and values must be plain data (str, bytes, numbers, tuples, lists, dicts, None).
    """

    def __init__(
        self,
        mapper: Callable[[str], Iterable[Pair]],
        reducer: Callable[[Any, list[Any]], Any],
        combiner: Callable[[Any, list[Any]], Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.mapper = mapper
        self.reducer = reducer
        self.combiner = combiner
        self.name = name or getattr(mapper, "__name__", "mapreduce")

    def map_split(self, data: bytes, partitions: int) -> list[bytes]:
        groups: dict[Any, list[Any]] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            for key, value in self.mapper(line):
                groups.setdefault(key, []).append(value)
        if self.combiner is not None:
            groups = {k: [self.combiner(k, vs)] for k, vs in groups.items()}
        parts: list[dict[Any, list[Any]]] = [{} for _ in range(partitions)]
        for key, values in groups.items():
            parts[partition_of(key, partitions)][key] = values
        return [pickle.dumps(p, protocol=PAYLOAD_PROTOCOL) for p in parts]

    def reduce_parts(self, paths: Sequence[Path]) -> bytes:
        groups: dict[Any, list[Any]] = {}
        for path in paths:
            for key, values in plain_loads(path.read_bytes()).items():
                groups.setdefault(key, []).extend(values)
        reduced = {k: self.reducer(k, vs) for k, vs in groups.items()}
        return tsv_lines(_sorted_items(reduced))


class CountJob(Job):
    """A job that counts byte strings: `count(split)` makes one map task's Counter (its own
    combiner); the reduce sums them into `key<TAB>count` lines sorted by key."""

    def count(self, data: bytes) -> Counter[bytes]:
        raise NotImplementedError

    def map_split(self, data: bytes, partitions: int) -> list[bytes]:
        parts: list[dict[bytes, int]] = [{} for _ in range(partitions)]
        crc = zlib.crc32
        for key, n in self.count(data).items():
            parts[crc(key) % partitions][key] = n
        return [pickle.dumps(p, protocol=PAYLOAD_PROTOCOL) for p in parts]

    def reduce_parts(self, paths: Sequence[Path]) -> bytes:
        total: Counter[bytes] = Counter()
        for path in paths:
            total.update(plain_loads(path.read_bytes()))
        return b"".join(w + b"\t%d\n" % n for w, n in sorted(total.items()))


class WordCount(CountJob):
    """Occurrences of every whitespace-separated word, as `word<TAB>count` (case-sensitive,
    like Hadoop's example): each map task counts its split with one `Counter(bytes.split())`,
    which is its own combiner."""

    name = "wordcount"

    def count(self, data: bytes) -> Counter[bytes]:
        return Counter(data.split())


class Grep(CountJob):
    """Hadoop's grep example: every distinct match of a regular expression with the number of
    times it occurs, as `match<TAB>count`."""

    name = "grep"

    def __init__(self, pattern: str, ignore_case: bool = False) -> None:
        flags = re.IGNORECASE if ignore_case else 0
        try:
            re.compile(pattern.encode(), flags)
        except re.error as e:
            raise ValueError(f"not a regular expression: {pattern!r}: {e}") from None
        self.pattern = pattern
        self.flags = flags

    def describe(self) -> str:
        return f"grep {self.pattern!r}"

    def count(self, data: bytes) -> Counter[bytes]:
        regex = re.compile(self.pattern.encode(), self.flags)
        return Counter(m.group(0) for m in regex.finditer(data))
