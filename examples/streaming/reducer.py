#!/usr/bin/env python3
"""The classic Hadoop Streaming word-count reducer: sums the counts of each word of its
sorted input, a group of equal words at a time."""
import sys
from itertools import groupby
from operator import itemgetter


def read_mapper_output(file, separator="\t"):
    for line in file:
        yield line.rstrip("\n").split(separator, 1)


def main(separator="\t"):
    data = read_mapper_output(sys.stdin, separator=separator)
    for word, group in groupby(data, itemgetter(0)):
        total = sum(int(count) for _, count in group)
        print(f"{word}{separator}{total}")


if __name__ == "__main__":
    main()
