"""A function as bytes for the nodes: cloudpickle, keeping the name of the file it came from.

cloudpickle writes every function it sends by value (one from a script or the user's own
module) with the file name `<dynamic-code>`, so that its bytes do not depend on where the file
lies. A traceback from a node then names `<dynamic-code>`, and the user cannot tell which of
their files failed. Here each code object keeps its file, written relative to the working
directory when it lies below it (else its base name, so that nothing of the client's
directory layout travels to the devices), and its line numbers, so a remote traceback reads
`File "jobs.py", line 3, in boom`.
"""

from __future__ import annotations

import io
import os
import types
from collections import ChainMap
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle

_DYNAMIC = "<dynamic-code>"


def dumps(obj: Any) -> bytes:
    """`cloudpickle.dumps(obj)`, with the file names of by-value code kept."""
    with io.BytesIO() as buffer:
        _NamedCodePickler(buffer).dump(obj)
        return buffer.getvalue()


def shown_name(filename: str, cwd: str | None = None) -> str:
    """How a traceback on a node names `filename`: relative to `cwd` below it, else its base
    name; names like `<stdin>` or `<string>` as they are."""
    if not filename or filename.startswith("<"):
        return filename
    here = os.path.realpath(cwd or os.getcwd())
    path = os.path.realpath(filename)
    if path.startswith(here + os.sep):
        return os.path.relpath(path, here)
    return os.path.basename(path)


def _code_reduce(code: types.CodeType) -> Any:
    rebuild, args = _REDUCE_CODE(code)
    name = shown_name(code.co_filename)
    return rebuild, tuple(name if a == _DYNAMIC else a for a in args)


# cloudpickle's own reducer, found where it is today; a cloudpickle without one (a new
# version) pickles as cloudpickle does, `<dynamic-code>` and all.
_REDUCE_CODE = getattr(_cloudpickle, "_code_reduce", None)


class _NamedCodePickler(cloudpickle.Pickler):
    if _REDUCE_CODE is not None:
        dispatch_table = ChainMap(
            {types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table
        )
