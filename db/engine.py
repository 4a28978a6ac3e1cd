"""Engine, transactions and migrations. SQLite by default (WAL, FULL sync, BEGIN IMMEDIATE for writes);
any SQLAlchemy URL works, PostgreSQL included."""

from __future__ import annotations

import logging
import random
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


class DatabaseBusy(Exception):
    """The database stayed locked by another writer; nothing was saved."""

    def __init__(self, attempts: int):
        super().__init__(
            f"The database is locked by another process (tried {attempts} times); "
            "nothing was saved. Try again."
        )


class DatabaseUnavailable(Exception):
    """The database cannot be opened or is not at the current schema."""


def make_engine(url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
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


def _is_locked(exc: OperationalError) -> bool:
    # PostgreSQL: a serialization failure or a deadlock; the unit lost a race with another writer.
    if getattr(exc.orig, "sqlstate", None) in ("40001", "40P01"):
        return True
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" in text or "busy" in text


def write(engine: Engine, fn: Callable[[Session], T], *, attempts: int = 5) -> T:
    """Run fn in one write transaction; retry the whole unit when SQLite reports it is locked (or, elsewhere,
    when it lost a race with another writer)."""
    for attempt in range(1, attempts + 1):
        try:
            with Session(engine, expire_on_commit=False) as s, s.begin():
                if engine.dialect.name != "sqlite":
                    # SQLite writers run one at a time (BEGIN IMMEDIATE); elsewhere SERIALIZABLE gives the same
                    # result (a read-then-write unit acts as if alone) or a serialization failure, run again.
                    s.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                return fn(s)
        except OperationalError as exc:
            if not _is_locked(exc):
                raise
            log.warning("database locked (attempt %d/%d)", attempt, attempts)
            time.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))  # jitter: racers do not meet again
    raise DatabaseBusy(attempts)


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
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
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
