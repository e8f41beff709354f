"""Decode a node's pickle as data, never as code; rebuild a node's exception from plain fields.

A result comes from a device fogwheel does not own (DESIGN principle 7), and a pickle is a
program: `pickle.loads` imports whatever module it names and calls whatever it likes
(`os.system`, `builtins.exec`). `loads` here is the restricted decoder the SDK uses instead,
after `torch.load(weights_only=True)`:

- globals are looked up in an allow-list and never imported: plain types (numbers, strings,
  bytes, containers, `range`, `slice`), `decimal`, `fractions`, `datetime`, the `collections`
  containers, numpy arrays, dtypes and scalars, and the types the customer trusts
  (`trusted=[MyClass, "pkg.mod:Name"]`);
- the opcodes that run code are narrowed: REDUCE and NEWOBJ call only allow-listed
  constructors, and never with a lazy `range` to expand; BUILD sets state only on the
  customer's trusted types and on fresh numpy objects; no persistent ids, no extension
  registry, no protocol-0 `INST`/`OBJ`;
- numpy is checked before it touches a byte: no object dtypes (their bytes would be taken for
  pointers), dtype flags and field offsets that numpy itself would have computed, a buffer
  whose size fits the shape, and every dtype built afresh (never numpy's shared singletons);
- the work is bounded: input size, opcodes (so objects and memo entries) and nesting.

It is built on the pure-Python `pickle._Unpickler`, whose opcode table can be narrowed like
this; the C unpickler cannot be. `dumps` is the matching encoder a worker uses: plain pickle,
with the classes of a customer's own script named by module and name (as a client that trusts
them finds them) rather than shipped by value.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import decimal
import fractions
import importlib
import io
import math
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fogwheel.errors import RefusedValue

TrustedType = type | Callable[..., Any] | str

__all__ = [
    "Decoder",
    "Limits",
    "TrustedType",
    "dumps",
    "loads",
    "resolve",
    "type_name",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """How much work one result may cause: its size, its opcodes (each makes at most one
    object or memo entry) and how deeply its containers nest."""

    max_bytes: int = 512 << 20
    max_objects: int = 20_000_000
    max_depth: int = 1000


# -- what a result may name --------------------------------------------------------------------


def _bytes_like(*args: Any) -> bytes:
    """`bytes(...)` / `_codecs.encode(...)` for data already in the pickle, never `bytes(n)`."""
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], bytes | bytearray | list | tuple):
        return bytes(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    raise RefusedValue("bytes may be rebuilt only from bytes, a list of ints or latin-1 text")


def _bytearray_like(*args: Any) -> bytearray:
    return bytearray(_bytes_like(*args)) if args else bytearray()


_PLAIN_CALLABLES: dict[tuple[str, str], Any] = {
    ("builtins", n): getattr(builtins, n)
    for n in (
        "set",
        "frozenset",
        "complex",
        "slice",
        "range",
        "list",
        "tuple",
        "dict",
        "int",
        "float",
        "str",
        "bool",
    )
}
_PLAIN_CALLABLES.update(
    {
        ("builtins", "bytes"): _bytes_like,
        ("builtins", "bytearray"): _bytearray_like,
        ("_codecs", "encode"): _bytes_like,
        ("decimal", "Decimal"): decimal.Decimal,
        ("_decimal", "Decimal"): decimal.Decimal,
        ("_pydecimal", "Decimal"): decimal.Decimal,
        ("fractions", "Fraction"): fractions.Fraction,
        ("datetime", "date"): datetime.date,
        ("datetime", "time"): datetime.time,
        ("datetime", "datetime"): datetime.datetime,
        ("datetime", "timedelta"): datetime.timedelta,
        ("datetime", "timezone"): datetime.timezone,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "Counter"): collections.Counter,
        ("collections", "defaultdict"): collections.defaultdict,
        ("collections", "deque"): collections.deque,
    }
)
# Classes whose __new__ NEWOBJ may call (protocol 2+ pickles some containers that way).
_NEWOBJ_PLAIN = (
    collections.OrderedDict,
    collections.Counter,
    collections.defaultdict,
    collections.deque,
    set,
    frozenset,
    list,
    dict,
    tuple,
)

_NUMPY_NAMES = {
    ("numpy", "dtype"): "dtype",
    ("numpy", "ndarray"): "ndarray",
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    ("numpy.core.numeric", "_frombuffer"): "_frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
}
_DTYPE_FLAGS_ALLOWED = 0x08 | 0x10 | 0x80  # NEEDS_INIT, NEEDS_PYAPI, ALIGNED_STRUCT
_SAFE_DTYPE_KINDS = set("biufcmMSUV")


def type_name(cls: type) -> str:
    """`module:qualname` of a type, or the bare name of a builtin: how a node names the type
    of its result or exception, and how `trusted=` strings name a type."""
    module = getattr(cls, "__module__", None) or "builtins"
    qualname = getattr(cls, "__qualname__", None) or cls.__name__
    return qualname if module == "builtins" else f"{module}:{qualname}"


def resolve(spec: str) -> Any:
    """The object `pkg.mod:Name` (or `pkg.mod.Name`) names; the customer asked for it."""
    module, sep, qualname = spec.partition(":")
    if not sep:
        module, _, qualname = spec.rpartition(".")
    if not module or not qualname:
        raise ValueError(f"{spec!r}: name a type as 'package.module:Name'")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _key_of(obj: Any) -> tuple[str, str]:
    return (getattr(obj, "__module__", None) or "builtins", obj.__qualname__)


def _refused_global(module: str, name: str) -> RefusedValue:
    spec = f"{module}:{name}"
    if module.split(".")[0] == "cloudpickle":
        return RefusedValue(
            f"a result from a node holds code (a function or class sent by value, {spec}), "
            "which fogwheel never decodes from untrusted bytes: return data instead; only "
            "for a fog of your own devices, Client(unsafe_trust_nodes=True) decodes it",
            name=spec,
        )
    return RefusedValue(
        f"a result from a node names {spec}, which fogwheel does not decode from untrusted "
        f"bytes, so it was not loaded (nothing of it ran). If you trust that type, pass "
        f"trusted_types=[{spec!r}] (or the class itself) to Client(...) or to submit/map; "
        f"only for a fog of your own devices, Client(unsafe_trust_nodes=True) decodes any "
        f"pickle",
        name=spec,
    )


class Decoder:
    """A restricted decoder for one customer's results: the allow-list plus `trusted`."""

    def __init__(self, trusted: Iterable[TrustedType] = (), limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.trusted: dict[tuple[str, str], Any] = {}
        for t in trusted:
            obj = resolve(t) if isinstance(t, str) else t
            self.trusted[_key_of(obj)] = obj

    def with_trusted(self, more: Iterable[TrustedType]) -> Decoder:
        """This decoder, also trusting `more` (a per-call `trusted_types`)."""
        more = list(more)
        if not more:
            return self
        out = Decoder(more, self.limits)
        out.trusted = {**self.trusted, **out.trusted}
        return out

    def check_size(self, size: int) -> None:
        """Refuse a result of `size` bytes over the limit (before it is even fetched)."""
        if size > self.limits.max_bytes:
            raise RefusedValue(
                f"a result of {size} bytes is over the decoder's limit of "
                f"{self.limits.max_bytes} bytes (raise it with Client(result_limits=...))",
                name="",
            )

    def loads(self, data: bytes) -> Any:
        """Decode `data`; raise RefusedValue (naming what was refused) for anything else."""
        self.check_size(len(data))
        try:
            return _Unpickler(io.BytesIO(data), self).load()
        except RefusedValue:
            raise
        except RecursionError:
            raise RefusedValue("a result nests too deeply to decode", name="") from None
        except Exception as e:  # truncated, malformed, or a constructor refused its arguments
            raise RefusedValue(f"a result from a node did not decode: {e}", name="") from None

    def exception_type(self, name: str) -> type[BaseException] | None:
        """The allow-listed exception type `name` (as `type_name` writes it), or None."""
        if ":" not in name:
            cls = getattr(builtins, name, None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                return cls
            return None
        module, _, qualname = name.partition(":")
        cls = self.trusted.get((module, qualname))
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls
        return None


def loads(data: bytes, trusted: Iterable[TrustedType] = (), limits: Limits | None = None) -> Any:
    """Decode a node's pickle with the allow-list plus `trusted` (see the module docstring)."""
    return Decoder(trusted, limits).loads(data)


# -- the narrowed unpickler ----------------------------------------------------------------------


class _Unpickler(pickle._Unpickler):
    dispatch: dict[int, Callable[[Any], None]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO, decoder: Decoder) -> None:
        super().__init__(file, fix_imports=False, encoding="ASCII", errors="strict")
        self.decoder = decoder
        self.limits = decoder.limits
        self._np: Any = None
        self._multiarray: Any = None
        self._numpy_fns: dict[str, Any] = {}
        self._fresh: dict[int, Any] = {}  # id -> numpy object made here, not yet built
        self._sealed: dict[int, Any] = {}  # id -> numpy dtype built here and checked

    def load(self) -> Any:
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack: list[Any] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        budget = self.limits.max_objects
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                budget -= 1
                if budget < 0:
                    raise RefusedValue(
                        f"a result of more than {self.limits.max_objects} objects is over the "
                        "decoder's limit (raise it with Client(result_limits=...))",
                        name="",
                    )
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    # -- names --------------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 0-2 pickles spell builtins the Python 2 way
            module, name = "builtins", {"xrange": "range"}.get(name, name)
        key = (module, name)
        if key in self.decoder.trusted:
            return self.decoder.trusted[key]
        if key in _PLAIN_CALLABLES:
            return _PLAIN_CALLABLES[key]
        if key in _NUMPY_NAMES:
            return self._numpy_name(_NUMPY_NAMES[key])
        raise _refused_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedValue("a result with persistent ids is not plain data", name="")

    # -- calls --------------------------------------------------------------------------------

    def _callable_ok(self, fn: Any) -> bool:
        return (
            any(fn is v for v in _PLAIN_CALLABLES.values())
            or any(fn is v for v in self.decoder.trusted.values())
            or any(fn is v for v in self._numpy_fns.values())
        )

    @staticmethod
    def _no_lazy(args: Any) -> None:
        if any(isinstance(a, range) for a in args):
            raise RefusedValue("a result may not expand a range into a container", name="")

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        fn = stack[-1]
        if not isinstance(args, tuple) or not self._callable_ok(fn):
            raise RefusedValue(f"a result calls {fn!r}, which is not allowed", name="")
        self._no_lazy(args)
        stack[-1] = fn(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _newobj(self, cls: Any, args: Any, kwargs: Any) -> None:
        trusted = any(cls is v for v in self.decoder.trusted.values())
        if not isinstance(cls, type) or not (trusted or cls in _NEWOBJ_PLAIN):
            raise RefusedValue(f"a result makes a {cls!r}, which is not allowed", name="")
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise RefusedValue("a malformed NEWOBJ in a result", name="")
        self._no_lazy(args)
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._newobj(cls, args, {})

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._newobj(cls, args, kwargs)

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self) -> None:
        stack = self.stack
        state = stack[-1]
        inst = stack[-2]
        if id(inst) in self._fresh and self._fresh[id(inst)] is inst:
            self._build_numpy(inst, state)
            stack.pop()
            return
        trusted = tuple(t for t in self.decoder.trusted.values() if isinstance(t, type))
        if trusted and isinstance(inst, trusted):
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]  # the customer's type: its own __setstate__, or its __dict__
            return
        if not state:
            stack.pop()  # an empty state sets nothing: never call another type's __setstate__
            return
        raise RefusedValue(
            f"a result sets the state of a {type(inst).__name__}, which is not allowed", name=""
        )

    dispatch[pickle.BUILD[0]] = load_build

    def load_mark(self) -> None:
        if len(self.metastack) >= self.limits.max_depth:
            raise RefusedValue(
                f"a result nests deeper than {self.limits.max_depth} levels", name=""
            )
        super().load_mark()

    dispatch[pickle.MARK[0]] = load_mark

    def _refuse_opcode(self) -> None:
        raise RefusedValue("a result uses a pickle opcode that can run code", name="")

    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_opcode
    del _op

    # -- numpy ----------------------------------------------------------------------------------

    def _numpy_name(self, what: str) -> Any:
        if self._np is None:
            try:
                import numpy
            except ImportError:
                raise RefusedValue(
                    "a result holds numpy data, and numpy is not installed here", name="numpy"
                ) from None
            try:
                self._multiarray = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # numpy 1.x
                self._multiarray = importlib.import_module("numpy.core.multiarray")
            self._np = numpy
            self._numpy_fns = {
                "dtype": self._dtype,
                "_reconstruct": self._reconstruct,
                "scalar": self._scalar,
                "_frombuffer": self._frombuffer,
            }
        if what == "ndarray":
            return self._np.ndarray  # only as _reconstruct's argument: never called or built
        return self._numpy_fns[what]

    def _dtype(self, spec: Any, align: Any = False, copy: Any = True) -> Any:
        if not isinstance(spec, str) or spec[:1] not in _SAFE_DTYPE_KINDS:
            raise RefusedValue(
                f"a result holds a numpy dtype {spec!r}: arrays of Python objects are not "
                "decoded from untrusted bytes (their bytes would be taken for pointers); "
                "return a list, or for a fog of your own devices use unsafe_trust_nodes",
                name="numpy.dtype",
            )
        d = self._np.dtype(spec, bool(align), True)  # a copy: never numpy's shared singletons
        self._fresh[id(d)] = d
        return d

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        np = self._np
        if subtype is not np.ndarray:
            raise RefusedValue("a result holds an ndarray subclass", name="numpy.ndarray")
        arr = self._multiarray._reconstruct(np.ndarray, (0,), b"b")
        self._fresh[id(arr)] = arr
        return arr

    def _sealed_dtype(self, d: Any) -> Any:
        if not (id(d) in self._sealed and self._sealed[id(d)] is d):
            raise RefusedValue("a result uses a numpy dtype before it is built", name="numpy.dtype")
        return d

    def _scalar(self, dtype: Any, data: Any = None) -> Any:
        d = self._sealed_dtype(dtype)
        if not isinstance(data, bytes) or len(data) != d.itemsize:
            raise RefusedValue("a numpy scalar whose bytes do not fit its dtype", name="numpy")
        return self._multiarray.scalar(d, data)

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
        d = self._sealed_dtype(dtype)
        if not isinstance(buf, bytes | bytearray) or order not in ("C", "F"):
            raise RefusedValue("a numpy array from a buffer that is not bytes", name="numpy")
        size = _shape_size(shape) * d.itemsize
        if size != len(buf):
            raise RefusedValue("a numpy array whose bytes do not fit its shape", name="numpy")
        np = self._np
        return np.frombuffer(buf, dtype=d).reshape(shape, order=order)

    def _build_numpy(self, inst: Any, state: Any) -> None:
        np = self._np
        del self._fresh[id(inst)]  # built once only
        if isinstance(inst, np.dtype):
            inst.__setstate__(state)
            _check_dtype(np, inst)
            for sub in _sub_dtypes(inst):
                if not (id(sub) in self._sealed and self._sealed[id(sub)] is sub):
                    raise RefusedValue("a numpy dtype whose fields were not checked", name="numpy")
            self._sealed[id(inst)] = inst
            return
        if not (isinstance(state, tuple) and len(state) == 5):
            raise RefusedValue("a malformed numpy array state", name="numpy")
        version, shape, dtype, fortran, data = state
        self._sealed_dtype(dtype)
        if not isinstance(data, bytes | bytearray) or not isinstance(fortran, bool):
            raise RefusedValue("a numpy array whose data is not bytes", name="numpy")
        if _shape_size(shape) * dtype.itemsize != len(data):
            raise RefusedValue("a numpy array whose bytes do not fit its shape", name="numpy")
        inst.__setstate__((version, shape, dtype, fortran, data))


def _shape_size(shape: Any) -> int:
    if not isinstance(shape, tuple) or len(shape) > 64:
        raise RefusedValue("a numpy shape that is not a short tuple", name="numpy")
    if not all(type(n) is int and n >= 0 for n in shape):
        raise RefusedValue("a numpy shape of negative or non-integer sizes", name="numpy")
    return math.prod(shape)


def _sub_dtypes(d: Any) -> list[Any]:
    subs = [f[0] for f in (d.fields or {}).values()]
    if d.subdtype is not None:
        subs.append(d.subdtype[0])
    return subs


def _check_dtype(np: Any, d: Any) -> None:
    """A dtype whose state came from a node: no objects, flags and layout numpy would make."""
    if d.hasobject or d.flags & ~_DTYPE_FLAGS_ALLOWED or d.kind not in _SAFE_DTYPE_KINDS:
        raise RefusedValue("a result holds a numpy dtype with Python objects", name="numpy.dtype")
    if d.subdtype is not None:
        base, shape = d.subdtype
        if base.itemsize * _shape_size(tuple(shape)) != d.itemsize:
            raise RefusedValue("a numpy subarray dtype of the wrong size", name="numpy.dtype")
    if d.fields:
        if set(d.names or ()) - set(d.fields):
            raise RefusedValue("a numpy dtype names a field it lacks", name="numpy.dtype")
        for sub, offset, *_ in d.fields.values():
            if not (offset >= 0 and offset + sub.itemsize <= d.itemsize):
                raise RefusedValue("a numpy field outside its record", name="numpy.dtype")
        canon = np.dtype(
            {
                "names": list(d.names),
                "formats": [d.fields[n][0] for n in d.names],
                "offsets": [d.fields[n][1] for n in d.names],
                "itemsize": d.itemsize,
            }
        )
        if canon != d or (canon.flags & ~0x80) != (d.flags & ~0x80):
            raise RefusedValue("a numpy record dtype numpy would not make", name="numpy.dtype")
    elif d.subdtype is None and (np.dtype(d.str) != d or np.dtype(d.str).flags != d.flags):
        raise RefusedValue("a numpy dtype numpy would not make", name="numpy.dtype")


# -- the matching encoder (on the node) --------------------------------------------------------


class _ByNamePickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Plain pickle that names a class by module and qualname even when this process made it
    from a customer's script (cloudpickle by value) and so cannot import it back."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        try:
            super().save_global(obj, name)
        except pickle.PicklingError:
            module = getattr(obj, "__module__", None)
            qualname = name or getattr(obj, "__qualname__", None)
            if not isinstance(obj, type) or not module or not qualname or self.proto < 4:
                raise
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)  # type: ignore[attr-defined]
            self.memoize(obj)  # type: ignore[attr-defined]


def dumps(value: Any) -> bytes:
    """Pickle a result for `loads`: plain pickle (protocol 5), a customer script's classes
    named by reference; what will not pickle so (a lambda) goes by cloudpickle, which only a
    client with `unsafe_trust_nodes` will decode."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        pass
    try:
        buf = io.BytesIO()
        _ByNamePickler(buf, protocol=5).dump(value)
        return buf.getvalue()
    except Exception:
        import cloudpickle  # type: ignore[import-untyped]

        return bytes(cloudpickle.dumps(value))
