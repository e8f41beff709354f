"""Framing between the agent and its worker processes: 4-byte length, then a pickle."""

from __future__ import annotations

import pickle
import struct
from typing import IO, Any

_LEN = struct.Struct("!I")


def send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        n = stream.write(view)
        view = view[n if n is not None else len(view) :]
    stream.flush()


def recv(stream: IO[bytes]) -> Any:
    head = _read_exactly(stream, _LEN.size)
    (n,) = _LEN.unpack(head)
    return pickle.loads(_read_exactly(stream, n))


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("worker pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
