"""Recognise live databases among the files that are open for writing.

A snapshot is crash-consistent: it holds the volume as a power cut would have
left it. A database survives that (it replays its log), but only if every
one of its files comes from the same instant and the engine is one that
recovers; and restoring such a copy is a recovery, not a restore. So when a
snapshot is taken while a database is open, the backup must say so and name
the database's own backup tool (DESIGN.md, "Databases").

The daemon knows which files are open for writing through the live view at
snapshot time (``Volume.open_for_write``). :func:`detect` looks at those
paths and at their neighbours (a SQLite ``-wal`` file next to a database, a
PostgreSQL data directory's ``PG_VERSION`` and ``postmaster.pid`` ...). It
never opens a file for writing and reads at most the first bytes of the
open files, so it is cheap enough to run on every snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

#: how many open files are sniffed for a database header at most (a volume
#: with thousands of open files must not make the snapshot report slow)
MAX_SNIFF = 256

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_SIDE = ("-wal", "-journal", "-shm")


@dataclass(frozen=True)
class DatabaseHint:
    """A database that looks live: what it is, where, and how to back it up properly."""

    kind: str
    path: str  # volume-relative path of the database (file or data directory)
    evidence: str  # why vspfs thinks so
    tool: str  # the database's own backup tool

    def message(self, volume: str) -> str:
        where = os.path.join(volume, self.path) if self.path not in ("", ".") else volume
        return (
            f"{where} looks like a live {self.kind} database ({self.evidence}): the snapshot holds a "
            f"crash-consistent copy only; for an application-consistent backup use {self.tool}"
        )

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class _Kind:
    name: str
    tool: str


SQLITE = _Kind("SQLite", 'sqlite3 DB ".backup FILE" (or VACUUM INTO)')
POSTGRES = _Kind("PostgreSQL", "pg_basebackup (or pg_dump / pg_dumpall)")
MYSQL = _Kind("MySQL/MariaDB (InnoDB)", "mariabackup / xtrabackup, or mysqldump --single-transaction")
SQLSERVER = _Kind("SQL Server", "BACKUP DATABASE (T-SQL, e.g. through sqlcmd)")
LMDB = _Kind("LMDB", "mdb_copy")
MONGODB = _Kind("MongoDB (WiredTiger)", "mongodump (or db.fsyncLock() around the snapshot)")
REDIS = _Kind("Redis", "redis-cli --rdb FILE (or BGSAVE)")
BERKELEY = _Kind("Berkeley DB", "db_hotbackup")
FIREBIRD = _Kind("Firebird", "gbak (or nbackup)")
ORACLE = _Kind("Oracle", "RMAN")

_INNODB_NAMES = {"ibdata1", "ib_logfile0", "ib_logfile1", "ibtmp1", "mysql.ibd", "undo_001", "undo_002"}


def _by_name(rel: str) -> tuple[_Kind, str, str] | None:
    """(kind, database path, evidence) for a path that names a database file by itself."""
    name = os.path.basename(rel)
    lower = name.lower()
    parent = os.path.dirname(rel)
    for side in _SQLITE_SIDE:
        if name.endswith(side) and len(name) > len(side):
            return SQLITE, rel[: -len(side)], f"{name} is open for writing"
    if lower in _INNODB_NAMES or lower.endswith(".ibd") or os.path.basename(parent) == "#innodb_redo":
        datadir = os.path.dirname(parent) if os.path.basename(parent) == "#innodb_redo" else parent
        return MYSQL, datadir or ".", f"{name} is open for writing"
    if lower.endswith((".mdf", ".ldf", ".ndf")):
        return SQLSERVER, rel, f"{name} is open for writing"
    if lower in ("data.mdb", "lock.mdb"):
        return LMDB, parent or ".", f"{name} is open for writing"
    if lower in ("wiredtiger", "wiredtiger.wt", "mongod.lock") or lower.endswith(".wt"):
        return MONGODB, parent or ".", f"{name} is open for writing"
    if lower in ("dump.rdb", "appendonly.aof") or os.path.basename(parent) == "appendonlydir":
        return REDIS, rel, f"{name} is open for writing"
    if lower.startswith("__db.") and lower[5:].isdigit():
        return BERKELEY, parent or ".", f"{name} is open for writing"
    if lower.endswith(".fdb"):
        return FIREBIRD, rel, f"{name} is open for writing"
    if lower.endswith(".dbf") and len(lower) > 4:
        return ORACLE, rel, f"{name} is open for writing"
    return None


def _postgres_dir(rel: str, exists: Callable[[str], bool]) -> str | None:
    """The PostgreSQL data directory that holds ``rel``, if any (PG_VERSION + postmaster.pid)."""
    d = os.path.dirname(rel)
    while True:
        if exists(os.path.join(d, "PG_VERSION")) and exists(os.path.join(d, "postmaster.pid")):
            return d or "."
        if not d:
            return None
        d = os.path.dirname(d)


def detect(
    open_paths: Iterable[str],
    exists: Callable[[str], bool],
    head: Callable[[str], bytes] | None = None,
) -> list[DatabaseHint]:
    """The live databases that the files open for writing point at.

    ``open_paths`` are volume-relative; ``exists(rel)`` says whether a path
    exists on the volume; ``head(rel)`` returns a file's first bytes (to
    recognise a SQLite file in rollback-journal mode between transactions),
    or is None to skip that. One hint per database, in path order.
    """
    found: dict[tuple[str, str], DatabaseHint] = {}
    pg_checked: dict[str, str | None] = {}
    sniffed = 0

    def add(kind: _Kind, path: str, evidence: str) -> None:
        path = path.strip("/") or "."
        found.setdefault((kind.name, path), DatabaseHint(kind.name, path, evidence, kind.tool))

    paths = sorted({p.strip("/") for p in open_paths} - {""})
    rest = []
    for rel in paths:  # names that say it all first: they make the clearest evidence
        hit = _by_name(rel)
        if hit is not None:
            add(*hit)
        else:
            rest.append(rel)
    for rel in rest:
        d = os.path.dirname(rel)
        if d not in pg_checked:
            pg_checked[d] = _postgres_dir(rel, exists)
        if pg_checked[d] is not None:
            add(POSTGRES, pg_checked[d] or ".", "its data directory has PG_VERSION and postmaster.pid")
            continue
        side = next((s for s in _SQLITE_SIDE[:2] if exists(rel + s)), None)
        if side is not None:
            add(SQLITE, rel, f"{os.path.basename(rel)}{side} exists next to it")
            continue
        if head is not None and sniffed < MAX_SNIFF:
            sniffed += 1
            try:
                start = head(rel)
            except OSError:
                start = b""
            if start.startswith(_SQLITE_MAGIC):
                add(SQLITE, rel, "it is a SQLite file open for writing")
    return sorted(found.values(), key=lambda h: (h.path, h.kind))
