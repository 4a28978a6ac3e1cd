import sqlite3
import threading

import pytest
from sqlalchemy import func, select

from db import engine as dbe
from db import repo
from db.models import Study


def test_sixteen_concurrent_writers_lose_nothing_and_duplicate_nothing(ctx):
    errors = []

    def writer(k):
        engine = dbe.make_engine(ctx.settings.db_url)  # one engine per writer, as separate processes would have
        try:
            for i in range(10):
                # Every writer also races for the same shared study: exactly one row may exist for it.
                dbe.write(engine, lambda s, i=i: repo.get_or_create_study(s, f"1.2.{k}.{i}"))
                dbe.write(engine, lambda s: repo.get_or_create_study(s, "1.2.shared"))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with dbe.read(ctx.engine) as s:
        assert s.scalar(select(func.count(Study.id))) == 16 * 10 + 1


def test_a_locked_database_gives_a_clear_error_and_keeps_what_was_stored(ctx):
    dbe.write(ctx.engine, lambda s: repo.get_or_create_study(s, "1.2.kept"))
    blocker = sqlite3.connect(ctx.settings.db_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        engine = dbe.make_engine(ctx.settings.db_url, busy_timeout_ms=50)
        with pytest.raises(dbe.DatabaseBusy, match="locked by another process.*nothing was saved"):
            dbe.write(engine, lambda s: repo.get_or_create_study(s, "1.2.lost"), attempts=2)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with dbe.read(ctx.engine) as s:
        uids = set(s.scalars(select(Study.study_instance_uid)))
    assert uids == {"1.2.kept"}
