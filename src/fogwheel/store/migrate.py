"""Bring an existing database up to the tables of this version: add the columns it lacks.

`create_all` makes missing tables but never touches existing ones, so a coordinator upgraded
in place would fail on the first query that names a new column (nodes.owner_id, say). New
columns are always nullable or have a scalar default (a rule for schema.py), so adding them
with `ALTER TABLE … ADD COLUMN … DEFAULT …` is safe on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Column, ColumnDefault, Engine, MetaData, inspect, text

log = logging.getLogger("fogwheel.store")


def missing_columns(engine: Engine, metadata: MetaData) -> list[tuple[str, Column[Any]]]:
    """(table, column) pairs that the tables in the database lack."""
    have = inspect(engine)
    out = []
    for table in metadata.sorted_tables:
        if not have.has_table(table.name):
            continue  # create_all makes it whole
        present = {c["name"] for c in have.get_columns(table.name)}
        out += [(table.name, col) for col in table.columns if col.name not in present]
    return out


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Add every missing column (and index); returns what it added, `table.column` and
    `index name`."""
    added = []
    for table_name, col in missing_columns(engine, metadata):
        kind = col.type.compile(dialect=engine.dialect)
        dflt = col.default
        default = dflt.arg if isinstance(dflt, ColumnDefault) and dflt.is_scalar else None
        clause = f'ALTER TABLE {table_name} ADD COLUMN "{col.name}" {kind}'
        if default is not None:
            clause += f" DEFAULT {_literal(default)}"
        if not col.nullable:
            if default is None:
                raise RuntimeError(
                    f"cannot add {table_name}.{col.name} to an existing database: a new NOT NULL "
                    "column needs a scalar default in store/schema.py"
                )
            clause += " NOT NULL"
        with engine.begin() as c:
            c.execute(text(clause))
        added.append(f"{table_name}.{col.name}")
    have = inspect(engine)
    for table in metadata.sorted_tables:
        if not have.has_table(table.name):
            continue
        present = {i["name"] for i in have.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(engine)
                added.append(f"index {index.name}")
    if "attempts.job_id" in added:  # rows from before it: their task's job
        with engine.begin() as c:
            c.execute(
                text(
                    "UPDATE attempts SET job_id = "
                    "(SELECT tasks.job_id FROM tasks WHERE tasks.id = attempts.task_id) "
                    "WHERE job_id IS NULL"
                )
            )
    if added:
        log.info("database upgraded: added %s", ", ".join(added))
    return added


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
