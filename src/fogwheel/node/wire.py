"""Framing between the agent and its worker processes: 4-byte length, then a pickle.

Both directions carry plain data only (dicts, lists, strings, bytes, numbers): the decoder
refuses every class and function reference, so a guest that writes its own bytes into the
pipe cannot make the agent, which sits outside the sandbox, run code. Customer objects travel
inside as cloudpickled `bytes` and are unpickled in the worker only.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import IO, Any

HEADER = struct.Struct("!I")


class PlainDataOnly(pickle.UnpicklingError):
    """A message named a class or function: the pipe carries plain data only."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise PlainDataOnly(f"refused {module}.{name}: worker messages carry plain data only")


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def send(stream: IO[bytes], message: Any) -> None:
    view = memoryview(encode(message))
    while view:
        n = stream.write(view)
        view = view[n if n is not None else len(view) :]
    stream.flush()


def recv(stream: IO[bytes]) -> Any:
    head = _read_exactly(stream, HEADER.size)
    (n,) = HEADER.unpack(head)
    return decode(_read_exactly(stream, n))


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("worker pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
