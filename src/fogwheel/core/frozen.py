"""A faster `__init__` for frozen, slotted dataclasses, with the same signature and effect.

A frozen dataclass's generated `__init__` sets each field with `object.__setattr__(self,
name, value)`, which looks the name up through the class each time. The simulator builds a
few million `Task`s, `Candidate`s and `NodeView`s a run (and the coordinator one or more per
lease), and half of that time is this look-up. `fast_init` replaces the generated `__init__`
with one that calls each slot's own descriptor (`Cls.field.__set__`): the same parameters,
defaults and default factories, the same values set, in the same order; the instance is as
frozen as before (only `__init__` changes; `__setattr__` still refuses). The generated one is
kept as `Cls.__init__.dataclass_init` (tests/test_core_frozen.py compares the two).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

# Marks a parameter whose default comes from its field's default_factory: dataclasses' own
# marker, so that the signature reads as the generated one's (`<factory>`).
_FACTORY: object = getattr(dataclasses, "_HAS_DEFAULT_FACTORY", object())


def fast_init(cls: type[T]) -> type[T]:
    """Give a frozen, slotted dataclass the faster `__init__` (a class decorator, applied
    above `@dataclass(frozen=True, slots=True)`)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or any(not f.init or f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: only plain fields are supported")
    names = [f.name for f in fields]
    if "self" in names:
        raise TypeError(f"{cls.__name__}: a field named self")
    ns: dict[str, Any] = {"_FACTORY": _FACTORY}
    args, body = [], []
    for f in fields:
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            ns[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            ns[f"_factory_{f.name}"] = f.default_factory
            args.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _factory_{f.name}()")
        else:
            args.append(f.name)
        body.append(f"    _set_{f.name}(self, {f.name})")
    source = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body or ["    pass"])
    exec(source, ns)
    init = ns["__init__"]
    original = cls.__dict__["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(original.__annotations__)
    init.__doc__ = original.__doc__
    init.dataclass_init = original
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
