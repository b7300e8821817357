"""Direct SQL on a stack's audit store, whichever backend it is on: what a local attacker
with the database's credentials (or its file) can do, bypassing the service.

`open_store(stack)` gives a connection with `execute(sql, params)` (`?` placeholders on
both backends), rows readable by column name, and `columns(table)`; it commits on leaving
its `with` block."""

from __future__ import annotations

import sqlite3
from typing import Any

import yaml

from .stack import Stack


class StoreConnection:
    def __init__(self, stack: Stack) -> None:
        url = yaml.safe_load(stack.config_path.read_text())["audit"]["database"]
        self.postgres = url.startswith(("postgres://", "postgresql://"))
        if self.postgres:
            import psycopg  # only the tests on PostgreSQL need it
            from psycopg.rows import dict_row

            self.conn: Any = psycopg.connect(url, row_factory=dict_row)
        else:
            self.conn = sqlite3.connect(stack.db_path)
            self.conn.row_factory = sqlite3.Row

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def columns(self, table: str) -> list[str]:
        if self.postgres:
            rows = self.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                (table,),
            )
            return [r["column_name"] for r in rows]
        return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]

    def __enter__(self) -> StoreConnection:
        return self

    def __exit__(self, kind: object, *_rest: object) -> None:
        if kind is None:
            self.conn.commit()
        self.conn.close()


def open_store(stack: Stack) -> StoreConnection:
    return StoreConnection(stack)
