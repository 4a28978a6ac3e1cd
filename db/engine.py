"""Engine, transactions and migrations. SQLite by default (WAL, FULL sync, BEGIN IMMEDIATE for writes);
any SQLAlchemy URL works, PostgreSQL included."""

from __future__ import annotations

import logging
import os
import random
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 5000
# A unit that lost a race is run again, with a growing, jittered pause (capped below). SQLite waits for the
# lock itself (busy_timeout) before it reports one; PostgreSQL reports a conflict at once, and many writers
# on one row can lose several times running.
SQLITE_ATTEMPTS, WRITE_ATTEMPTS = 5, 30
RETRY_PAUSE_MIN_S, RETRY_PAUSE_CAP_S = 0.01, 1.0
# Why a write unit lost, from the driver's error: SQLite's lock, or PostgreSQL's SQLSTATE.
_CONFLICTS = {
    "locked": "the database is locked by another process",
    "40001": "it conflicted with other users' concurrent saves (PostgreSQL serialization failure, SQLSTATE 40001)",
    "40P01": "it deadlocked with other users' concurrent saves (PostgreSQL deadlock, SQLSTATE 40P01)",
}
retries = {kind: 0 for kind in _CONFLICTS}  # units run again since start, per cause (read by tests and logs)


class DatabaseBusy(Exception):
    """A write unit kept losing to other writers (a lock, or a serialization failure); nothing was saved."""

    def __init__(self, attempts: int, cause: str = "locked"):
        self.cause = cause
        reason = _CONFLICTS[cause]
        if cause == "locked":
            text = f"The database is locked by another process (tried {attempts} times); nothing was saved."
        else:
            text = f"Nothing was saved: {reason}, {attempts} times in a row."
        super().__init__(text + " Try again.")


class DatabaseUnavailable(Exception):
    """The database cannot be opened or is not at the current schema."""


def _private_sqlite_file(path: Path) -> None:
    """The database holds patient data: its folder 0700 when we create it, the file (and SQLite's -wal and
    -shm, which SQLite creates with the file's mode) 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if p.exists() and stat.S_IMODE(p.stat().st_mode) != 0o600:
                os.chmod(p, 0o600)
    except PermissionError:  # another user's file: not ours to change
        log.warning("cannot make the database file private")


def make_engine(url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
        _private_sqlite_file(Path(u.database))
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit BEGIN is DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers lock up front so two never deadlock on a lock upgrade; readers stay deferred.
        mode = "DEFERRED" if conn.get_execution_options().get("readonly") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _conflict(exc: OperationalError) -> str | None:
    """Why the unit lost a race with another writer ("locked", "40001", "40P01"), or None for other errors."""
    # psycopg 3 says `sqlstate`, psycopg2 `pgcode`
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if state in _CONFLICTS:
        return state
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" if "locked" in text or "busy" in text else None


def write(engine: Engine, fn: Callable[[Session], T], *, attempts: int | None = None) -> T:
    """Run fn in one write transaction; run the whole unit again when it lost a race with another writer:
    SQLite's lock, or on PostgreSQL a serialization failure or a deadlock. Raises DatabaseBusy, naming the
    cause, when it lost `attempts` times."""
    attempts = attempts or (SQLITE_ATTEMPTS if engine.dialect.name == "sqlite" else WRITE_ATTEMPTS)
    pause = RETRY_PAUSE_MIN_S
    for attempt in range(1, attempts + 1):
        try:
            with Session(engine, expire_on_commit=False) as s, s.begin():
                if engine.dialect.name != "sqlite":
                    # SQLite writers run one at a time (BEGIN IMMEDIATE); elsewhere SERIALIZABLE gives the same
                    # result (a read-then-write unit acts as if alone) or a serialization failure, run again.
                    s.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                return fn(s)
        except OperationalError as exc:
            cause = _conflict(exc)
            if cause is None:
                raise
            if attempt == attempts:
                raise DatabaseBusy(attempts, cause) from exc
            retries[cause] += 1
            log.info("write unit lost a race (%s), run again (attempt %d/%d)", cause, attempt, attempts)
            # Growing pauses with "decorrelated" jitter (each drawn up to 3x the last), so that the racers spread
            # out instead of meeting again; capped so that a save under load still answers within seconds.
            pause = min(RETRY_PAUSE_CAP_S, random.uniform(RETRY_PAUSE_MIN_S, 3 * pause))
            time.sleep(pause)
    raise AssertionError("unreachable")


@contextmanager
def read(engine: Engine) -> Iterator[Session]:
    """A read-only transaction (deferred on SQLite, so it never waits for writers under WAL)."""
    with Session(engine.execution_options(readonly=True)) as s, s.begin():
        yield s


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the database to the newest schema (creates it when empty)."""
    from alembic import command

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        _private_sqlite_file(Path(u.database))  # before Alembic's engine creates it with the umask's mode
    command.upgrade(alembic_config(url), "head")


def check_current(engine: Engine) -> None:
    """Raise DatabaseUnavailable unless the schema is at the newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(
        alembic_config(engine.url.render_as_string(hide_password=False))
    ).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise DatabaseUnavailable(
            f"database schema is at {current or 'nothing'}, expected {head}: run `cxr-review db upgrade`"
        )
