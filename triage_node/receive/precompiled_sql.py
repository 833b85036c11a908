"""The receive path's few SQLAlchemy Core statements, run on SQLite's own cursor.

``record_instance`` runs five statements per received instance. Through ``Connection.execute`` each costs about
0.1 ms of CPU in SQLAlchemy's execution context (parameter processing, result set-up, events), more than SQLite
takes to run it. Here each statement is compiled once by the engine's own dialect, so the SQL text, the parameter
order and the type conversions (``UTCDateTime`` and the rest) are SQLAlchemy's; only the per-call machinery is
skipped. It runs inside the caller's transaction, on the connection SQLAlchemy already holds. Any other database,
or a statement that needs SQLAlchemy at execution time (a Python-side column default), goes through
``Connection.execute`` unchanged.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    fixed: Mapping[str, Any]  # values bound in the statement itself (literals such as a state)
    processors: tuple[Callable[[Any], Any] | None, ...]


# A memo of compiled SQL per (statement, dialect, inserted columns): filled once, never changed afterwards.
_COMPILED: dict[tuple[int, int, tuple[str, ...]], _Compiled | None] = {}


def _compile(stmt: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled | None:
    key = (id(stmt), id(dialect), keys)
    if key in _COMPILED:
        return _COMPILED[key]
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup or ())
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        result = None  # Python-side column defaults or values fetched back: SQLAlchemy has to run it
    else:
        fixed = {
            n: compiled.binds[n].effective_value
            for n in names
            if n not in keys and n in compiled.binds and not compiled.binds[n].required
        }
        procs = compiled._bind_processors
        result = _Compiled(compiled.string, names, fixed, tuple(procs.get(n) for n in names))
    _COMPILED[key] = result
    return result


@functools.lru_cache(maxsize=32)
def _row_type(columns: tuple[str, ...]) -> Any:
    return namedtuple("Row", columns)


class _Result:
    """The part of SQLAlchemy's ``CursorResult`` that ``record_instance`` uses."""

    def __init__(self, rows: list[Any], rowcount: int, lastrowid: int | None):
        self._rows = rows
        self.rowcount = rowcount
        self.inserted_primary_key = (lastrowid,)

    def all(self) -> list[Any]:
        return self._rows

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise ValueError(f"expected at most one row, got {len(self._rows)}")
        return self._rows[0] if self._rows else None

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


class PrecompiledConnection:
    """Executes Core statements on the DBAPI cursor of ``conn`` when it is SQLite (see the module docstring)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.dialect = conn.dialect
        self._raw = conn.connection.driver_connection if conn.dialect.name == "sqlite" else None

    def execute(self, stmt: Executable, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
        batch: Sequence[Mapping[str, Any]] = [params] if isinstance(params, Mapping) else params
        many, first = len(batch) != 1 or not isinstance(params, Mapping), batch[0]
        keys = tuple(first) if isinstance(stmt, Insert) else ()
        compiled = _compile(stmt, self.dialect, keys) if self._raw is not None else None
        if compiled is None:
            return self.conn.execute(stmt, params)
        cursor = self._raw.cursor()  # type: ignore[union-attr]
        try:
            if many:
                cursor.executemany(compiled.sql, [self._values(compiled, p) for p in batch])
                return _Result([], cursor.rowcount, None)
            cursor.execute(compiled.sql, self._values(compiled, first))
            rows: list[Any] = []
            if cursor.description:
                row_type = _row_type(tuple(d[0] for d in cursor.description))
                rows = [row_type(*r) for r in cursor.fetchall()]
            return _Result(rows, cursor.rowcount, cursor.lastrowid)
        finally:
            cursor.close()

    @staticmethod
    def _values(compiled: _Compiled, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, proc in zip(compiled.names, compiled.processors, strict=True):
            value = params[name] if name in params else compiled.fixed[name]
            out.append(proc(value) if proc is not None else value)
        return out


@dataclass(frozen=True)
class PgCompiled:
    """A Core statement compiled once for psycopg (``%(name)s`` parameters), to run on psycopg's own cursor, e.g. in
    a pipeline, which SQLAlchemy does not offer. ``params`` applies SQLAlchemy's bind processors (``UTCDateTime``)
    and the values bound in the statement itself."""

    sql: str
    compiled: Any

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        procs = self.compiled._bind_processors
        out = self.compiled.construct_params(dict(values), _check=False)
        return {k: procs[k](v) if k in procs else v for k, v in out.items()}


_PG_COMPILED: dict[tuple[int, int, tuple[str, ...]], PgCompiled] = {}


def pg_compiled(stmt: Executable, dialect: Dialect, keys: Sequence[str] = ()) -> PgCompiled:
    """``stmt`` compiled for ``dialect`` (a psycopg dialect); ``keys``: the columns an INSERT gives values for."""
    key = (id(stmt), id(dialect), tuple(keys))
    found = _PG_COMPILED.get(key)
    if found is None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)  # type: ignore[attr-defined]
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ValueError("a statement with Python-side defaults cannot run outside SQLAlchemy")
        found = _PG_COMPILED[key] = PgCompiled(compiled.string, compiled)
    return found
