"""The results file: one SQLite database, one row per experiment.

Every result is written in a single transaction, so a killed process leaves
either the whole row or none. The experiment key is unique: a rerun asks
`has(key)` and skips finished work; a failed unit is recorded with its error and
may be replaced by a later success.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

COLUMNS = {
    "key": "TEXT PRIMARY KEY",
    "status": "TEXT NOT NULL",  # ok | failed
    "dataset": "TEXT",
    "arch": "TEXT",
    "attack": "TEXT",
    "poison_ratio": "REAL",
    "defense": "TEXT",
    "spc": "INTEGER",
    "partition": "INTEGER",
    "seed": "INTEGER",
    "preset": "TEXT",
    "acc_pre": "REAL",
    "asr_pre": "REAL",
    "ra_pre": "REAL",
    "acc_post": "REAL",
    "asr_post": "REAL",
    "ra_post": "REAL",
    "arr": "REAL",
    "rdr": "REAL",
    "defense_seconds": "REAL",
    "details": "TEXT",  # JSON: what the defense did
    "config": "TEXT",  # JSON: the full experiment configuration
    "error": "TEXT",
    "created_at": "TEXT",
    "bd_version": "TEXT",
}
JSON_COLUMNS = ("details", "config")


class ResultStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        self._db.execute(f"CREATE TABLE IF NOT EXISTS results ({cols})")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, key: str) -> bool:
        """True when `key` finished successfully (failed units are retried)."""
        row = self._db.execute("SELECT 1 FROM results WHERE key = ? AND status = 'ok'", (key,)).fetchone()
        return row is not None

    def put(self, record: dict[str, Any]) -> bool:
        """Insert one result atomically; returns False when the key is already stored as ok."""
        unknown = set(record) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result fields: {sorted(unknown)}")
        row = dict(record)
        row.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
        for col in JSON_COLUMNS:
            if col in row and not isinstance(row[col], str):
                row[col] = json.dumps(row[col], default=str)
        names = list(row)
        sql = (
            f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
            f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in names if n != 'key')} "
            "WHERE results.status != 'ok'"
        )
        with self._db:  # BEGIN ... COMMIT: the row appears whole or not at all
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(sql, [row[n] for n in names])
        return cur.rowcount > 0

    def delete(self, key: str) -> None:
        """Forget one result (used by --force before the rerun's row is written)."""
        with self._db:
            self._db.execute("DELETE FROM results WHERE key = ?", (key,))

    def get(self, key: str) -> dict[str, Any] | None:
        rows = self.query(key=key)
        return rows[0] if rows else None

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        bad = set(filters) - set(COLUMNS)
        if bad:
            raise ValueError(f"unknown result columns: {sorted(bad)}; valid: {', '.join(COLUMNS)}")
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        cur = self._db.execute(f"SELECT * FROM results WHERE {where} ORDER BY created_at", list(filters.values()))
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for col in JSON_COLUMNS:
                if row.get(col):
                    row[col] = json.loads(row[col])
            out.append(row)
        return out

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
