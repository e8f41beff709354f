"""core/frozen.py's fast __init__ builds what the dataclass's own __init__ builds."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from fogwheel.core import scheduler, tasks, trust
from fogwheel.core.frozen import fast_init

FAST = [
    tasks.Task,
    tasks.Leased,
    tasks.Expired,
    scheduler.NodeView,
    scheduler.ClusterView,
    scheduler.Candidate,
    scheduler.Straggler,
    scheduler.Assignment,
    trust.Record,
    trust.Accept,
    trust.NeedMore,
]


def sample(f: dataclasses.Field[object], i: int) -> object:
    """A value of the field's kind, different per field."""
    kind = str(f.type)
    if "frozenset" in kind:
        return frozenset({f"n{i}"})
    if "tuple" in kind:
        return (f"n{i}",)
    if "TaskState" in kind:
        return tasks.TaskState.LEASED
    if "bool" in kind:
        return True
    if kind.startswith("float") or "float" in kind:
        return 1.5 + i
    if "int" in kind:
        return 7 + i
    return f"v{i}"


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_the_fast_init_sets_what_the_dataclass_init_sets(cls: type) -> None:
    original = cls.__init__.dataclass_init  # type: ignore[attr-defined]
    # The same parameters, defaults included
    assert inspect.signature(cls.__init__) == inspect.signature(original)
    fields = dataclasses.fields(cls)
    values = [sample(f, i) for i, f in enumerate(fields)]
    required = [
        v
        for f, v in zip(fields, values, strict=True)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for args, kwargs in [
        (values, {}),  # every field positionally
        (required, {}),  # the defaults
        ([], {f.name: v for f, v in zip(fields, values, strict=True)}),  # by keyword
    ]:
        theirs = object.__new__(cls)
        original(theirs, *args, **kwargs)
        ours = cls(*args, **kwargs)
        assert ours == theirs
        for f in fields:
            assert getattr(ours, f.name) is getattr(theirs, f.name) or (
                f.default_factory is not dataclasses.MISSING
            )
    # Still frozen, and wrong calls fail as they did
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cls(*required), fields[0].name, values[0])
    with pytest.raises(TypeError):
        cls(*values, "one too many")
    with pytest.raises(TypeError):
        cls(*required, nonsense=1)
    if required:
        with pytest.raises(TypeError):
            cls(*required[:-1])


def test_a_default_factory_gives_each_its_own_value_and_other_classes_are_refused() -> None:
    @fast_init
    @dataclass(frozen=True, slots=True)
    class Bag:
        name: str
        items: list[int] = field(default_factory=list)
        size: int = 3

    a, b = Bag("a"), Bag("b", size=4)
    assert a.items == [] and a.items is not b.items and b.size == 4
    assert Bag("c", [1]).items == [1]

    @dataclass(slots=True)
    class Thawed:
        x: int

    with pytest.raises(TypeError):
        fast_init(Thawed)

    @dataclass(frozen=True)
    class Unslotted:
        x: int

    with pytest.raises(TypeError):
        fast_init(Unslotted)
