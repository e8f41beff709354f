"""Load `NAME` from a user's Python file without running the file's own work on this machine.

`fogwheel mapreduce run FILE.py:NAME` used to import FILE.py, which runs all of its top-level
code: a file that is also a Hadoop Streaming mapper (`for line in sys.stdin: …`) sat waiting
on stdin, and a `main()` at the bottom ran here. Instead the file is parsed (`ast`) and only
its definitions are executed, in order, in a fresh module (named `fogwheel_user_STEM`, so not
`__main__`):

- `import` and `from … import` (an imported module loads as Python loads it);
- `def`, `async def` and `class` (decorators and default values are evaluated, as Python
  evaluates them; a class body follows these same rules);
- an assignment (also annotated) whose value is a *constant expression*: literals, names,
  attributes, subscripts, operators, f-strings, lambdas, and calls of DATA_CALLS only
  (`re.compile`, `frozenset`, `namedtuple`…);
- `NAME = …` itself, whatever its value (building the job is the point);
- docstrings, `pass`, and `try:` blocks made of these (`try: import x / except ImportError:`).

`if __name__ == "__main__":` blocks are skipped and never run. Any other top-level statement
(a loop, a call such as `main()`, `with`, `if`) is refused before anything runs, with its line
number and what to do: put it under `if __name__ == "__main__":` or inside a function.
"""

from __future__ import annotations

import ast
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Calls that build data and do nothing else: allowed in a top-level assignment.
DATA_CALLS = frozenset(
    {
        "re.compile", "frozenset", "set", "tuple", "list", "dict", "range", "bytes", "str",
        "int", "float", "bool", "object", "namedtuple", "collections.namedtuple",
        "TypeVar", "typing.TypeVar", "NewType", "typing.NewType", "Path", "pathlib.Path",
        "field", "dataclasses.field", "logging.getLogger", "getLogger",
    }
)  # fmt: skip
_CONSTANT_NODES = (
    ast.Constant, ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.Tuple, ast.List,
    ast.Set, ast.Dict, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
    ast.JoinedStr, ast.FormattedValue, ast.Starred, ast.Lambda, ast.Load, ast.Store,
    ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.keyword,
    ast.arguments, ast.arg,
)  # fmt: skip


STATEMENT_KINDS: dict[type[ast.stmt], str] = {
    ast.For: "a for loop",
    ast.AsyncFor: "a for loop",
    ast.While: "a while loop",
    ast.With: "a with block",
    ast.AsyncWith: "a with block",
    ast.If: "an if block",
}


class Refused(ValueError):
    """The file has a top-level statement that would run on this machine when loaded."""


@dataclass(frozen=True)
class Plan:
    """What to execute of a file: its allowed statements, in order, and what was skipped."""

    module: ast.Module
    skipped_main: int  # `if __name__ == "__main__":` blocks left out


def dotted(node: ast.expr) -> str:
    """`a.b.c` for a chain of attributes on a name; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def is_constant(expr: ast.AST) -> bool:
    """Whether `expr` only builds a value: no call but of DATA_CALLS, no await, no yield, no
    comprehension (a lambda's body is not looked into: it runs only when called)."""
    if isinstance(expr, ast.Lambda):
        return all(is_constant(d) for d in [*expr.args.defaults, *expr.args.kw_defaults] if d)
    if isinstance(expr, ast.Call) and dotted(expr.func) not in DATA_CALLS:
        return False
    if not isinstance(expr, (ast.Call, *_CONSTANT_NODES)):
        return False
    return all(is_constant(child) for child in ast.iter_child_nodes(expr))


def is_main_guard(stmt: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either way round)."""
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, *test.comparators]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(mains) == 1


def _targets(stmt: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def why_refused(stmt: ast.stmt, name: str) -> str | None:
    """None when `stmt` is a definition the loader runs; else what it is, for the error."""
    if isinstance(stmt, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    if isinstance(stmt, ast.Pass):
        return None
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return None  # a docstring
    if isinstance(stmt, ast.ClassDef):
        for inner in stmt.body:
            why = why_refused(inner, "")
            if why is not None:
                return f"{why} in the body of class {stmt.name}"
        return None
    if isinstance(stmt, ast.Assign | ast.AnnAssign):
        if stmt.value is None or name in _targets(stmt) or is_constant(stmt.value):
            return None
        return "an assignment that calls code"
    if isinstance(stmt, ast.Try):
        for inner in [*stmt.body, *stmt.orelse, *stmt.finalbody]:
            why = why_refused(inner, name)
            if why is not None:
                return why
        for handler in stmt.handlers:
            for inner in handler.body:
                why = why_refused(inner, name)
                if why is not None:
                    return why
        return None
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return f"a call of {dotted(stmt.value.func) or 'a function'}()"
    return STATEMENT_KINDS.get(type(stmt), f"a {type(stmt).__name__} statement")


def plan(source: str, filename: str, name: str) -> Plan:
    """The statements of `source` to execute to define `name`; Refused (with the first
    offending line) when a top-level statement would do work, SyntaxError when it is not
    Python."""
    tree = ast.parse(source, filename=filename)
    kept: list[ast.stmt] = []
    skipped = 0
    for stmt in tree.body:
        if is_main_guard(stmt):
            skipped += 1
            continue
        why = why_refused(stmt, name)
        if why is not None:
            raise Refused(
                f"{filename} line {stmt.lineno}: {why} would run on this machine when fogwheel "
                f"loads {name!r} (it runs only imports, definitions, constant assignments and "
                f'`{name} = …`): move it under `if __name__ == "__main__":` or into a function'
            )
        kept.append(stmt)
    return Plan(ast.Module(body=kept, type_ignores=[]), skipped)


def load(path: Path, name: str) -> Any:
    """The object `name` of the Python file `path`, defined by executing only its definitions
    (see the module docstring); KeyError when the file does not define it."""
    source = path.read_text(encoding="utf-8")
    chosen = plan(source, str(path), name)
    mod_name = f"fogwheel_user_{path.stem}"
    module = types.ModuleType(mod_name)
    module.__file__ = str(path.resolve())
    sys.modules[mod_name] = module  # cloudpickle ships its functions by value from here
    code = compile(chosen.module, str(path), "exec")
    exec(code, module.__dict__)  # only the definitions `plan` kept
    if name not in module.__dict__:
        raise KeyError(name)
    return module.__dict__[name]
