#!/usr/bin/env python3
"""The classic Hadoop Streaming word-count mapper: `word<TAB>1` for every word on stdin."""
import sys

for line in sys.stdin:
    for word in line.split():
        print(f"{word}\t1")
