"""The results file: one SQLite database, one row per experiment.

Every result is written in a single transaction, so a killed process leaves
either the whole row or none. The experiment key is unique: a rerun asks
`has(key)` and skips finished work; a failed unit is recorded with its error and
may be replaced by a later success.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bd_core.errors import BdError

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


def keep_unsaved(store: Path, row: dict[str, Any]) -> Path | str:
    """Write a row that could not reach the store to a side file (beside the store, else in the
    temporary folder) and return where it went; minutes of work are not lost to a full disk."""
    text = json.dumps(row, default=str, indent=1)
    for folder in (store.parent / f"{store.name}.unsaved", Path(tempfile.gettempdir()) / "bd-unsaved"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{row.get('key') or 'row'}.json"
            path.write_text(text)
            return path
        except OSError:
            continue
    sys.stderr.write(text + "\n")
    return "standard error (no folder could be written)"


class StoreError(BdError):
    """The results file cannot be opened, read or written."""


class ResultStore:
    """One SQLite file of results. `readonly` opens it for reading only (reports, dry runs): nothing
    is created or changed, and a store on a read-only mount can be read."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            self._db = self._open_readonly() if readonly else self._open_writable()
            self._db.execute("SELECT COUNT(*) FROM results").fetchone()
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"{self.path} is not a bd results file ({e}); pass --store with another file (bd creates it)"
            ) from None
        except OSError as e:
            raise StoreError(
                f"cannot use {self.path} as the results file ({e.strerror or e}); pass --store with a "
                "path in a writable folder"
            ) from None

    def _open_writable(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise StoreError(
                f"{self.path} is a directory; --store takes a file path, e.g. {self.path / 'results.sqlite'}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS results ({cols})")
        except sqlite3.OperationalError as e:
            if "readonly" in str(e) or "unable to open" in str(e):
                raise StoreError(
                    f"cannot write the results file {self.path} ({e}); pass --store with a path in a writable folder"
                ) from None
            raise
        return db

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"no results file at {self.path}; run `bd run` or `bd grid` first, or pass --store")
        uri = f"file:{quote(str(self.path.resolve()))}"
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60, isolation_level=None)
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            # a WAL database in a folder bd may not write (no -shm file can be made): read it as it is
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

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

    def put(self, record: dict[str, Any], replace: bool = False) -> bool:
        """Insert one result atomically; returns False when the key is already stored as ok
        (unless `replace`: then the new row takes its place, in the same transaction)."""
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only")
        unknown = set(record) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result fields: {sorted(unknown)}")
        row = {name: record.get(name) for name in COLUMNS}  # every column: a replaced row leaves nothing behind
        row["created_at"] = row["created_at"] or time.strftime("%Y-%m-%dT%H:%M:%S")
        for col in JSON_COLUMNS:
            if row[col] is not None and not isinstance(row[col], str):
                row[col] = json.dumps(row[col], default=str)
        names = list(row)
        sql = (
            f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
            f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in names if n != 'key')} "
            + ("" if replace else "WHERE results.status != 'ok'")
        )
        try:
            with self._db:  # BEGIN ... COMMIT: the row appears whole or not at all
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(sql, [row[n] for n in names])
        except sqlite3.Error as e:  # disk full, I/O error, file removed: keep the computed row
            kept = keep_unsaved(self.path, row)
            raise StoreError(
                f"could not write the result to {self.path} ({e}); the computed row is kept in {kept}"
            ) from None
        return cur.rowcount > 0

    def merge(self, source: ResultStore) -> dict[str, int]:
        """Copy in the rows of another results file (a grid run elsewhere: a lent GPU, a second
        machine): each row is `put` as it is, so a finished row here is never overwritten and a
        failed one gives way to the other file's; returns how many rows were added and kept."""
        if source.path.resolve() == self.path.resolve():
            raise StoreError(f"{source.path} cannot be merged into itself; pass --into with another results file")
        counts = {"added": 0, "kept": 0}
        for row in source.query():
            counts["added" if self.put(row) else "kept"] += 1
        return counts

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
            row = dict(zip(names, values, strict=True))
            for col in JSON_COLUMNS:
                if row.get(col):
                    row[col] = json.loads(row[col])
            out.append(row)
        return out

    def to_frame(self, status: str | None = "ok"):
        """The results as a pandas DataFrame, one row per experiment with flat columns: the
        experiment's settings, pre/post metrics, ARR, RDR, time, the device it ran on (None in rows
        stored before bd recorded it), and the defense's and attack's settings (JSON text);
        `status=None` keeps failed rows too."""
        import pandas as pd

        rows = self.query(**({"status": status} if status else {}))
        flat = []
        for row in rows:
            config, details = row.pop("config") or {}, row.pop("details") or {}
            attack = config.get("attack", {}) if isinstance(config, dict) else {}
            flat.append(
                {
                    **row,
                    "defense_settings": json.dumps(config.get("defense_settings", {}), sort_keys=True),
                    "attack_settings": json.dumps(attack.get("attack_settings", {}), sort_keys=True),
                    "attacked_model": details.get("attacked_model"),
                    "attacked_model_weights": details.get("attacked_model_weights"),
                    "device": details.get("device"),  # absent from rows stored before bd recorded it (all CPU)
                    "warnings": " | ".join(details.get("warnings", [])),
                    "precision": config.get("precision", "fp32") if isinstance(config, dict) else "fp32",
                }
            )
        columns = [c for c in COLUMNS if c not in JSON_COLUMNS] + [
            "defense_settings",
            "attack_settings",
            "attacked_model",
            "attacked_model_weights",
            "device",
            "warnings",
            "precision",
        ]
        return pd.DataFrame(flat, columns=columns)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
