"""No acknowledged write is lost when the writer is killed with SIGKILL mid-stream: a writer process prints each
study UID after its transaction committed; the test kills it at a random moment, again and again on the same
database, then finds every acknowledged row (and, on SQLite, a database that passes its integrity check).

A killed process leaves the operating system's page cache behind, so this shows durability across a process
crash (the commit protocol, WAL recovery), not across a power cut; that needs synchronous=FULL, which the
engine sets (asserted here)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

from sqlalchemy import select, text

from db import engine as dbe
from db.models import Study

WRITER = textwrap.dedent(
    """
    import sys
    from db import engine as dbe
    from db import repo

    engine, run = dbe.make_engine(sys.argv[1]), sys.argv[2]
    for i in range(10**6):
        uid = f"1.2.{run}.{i}"
        dbe.write(engine, lambda s: repo.get_or_create_study(s, uid))
        print(uid, flush=True)  # acknowledged: the commit returned
    """
)


def _kill_runs(url: str, runs: int, seed: int) -> set[str]:
    rng, acknowledged = random.Random(seed), set()
    for run in range(runs):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(run)], stdout=subprocess.PIPE, text=True)
        for _ in range(rng.randint(3, 40)):
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"the writer stopped on its own ({proc.wait()})")
            acknowledged.add(line.strip())
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, most of the time
        proc.wait()
        acknowledged.update(line.strip() for line in proc.stdout)  # acked just before the kill
    return acknowledged


def test_thirty_sigkills_lose_no_acknowledged_write_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    dbe.upgrade(url)
    acknowledged = _kill_runs(url, 30, seed=0)
    engine = dbe.make_engine(url)
    with dbe.read(engine) as s:
        stored = set(s.scalars(select(Study.study_instance_uid)))
        assert s.scalar(text("PRAGMA integrity_check")) == "ok"
        assert s.scalar(text("PRAGMA synchronous")) == 2  # FULL: a commit is on disk before it returns
    assert acknowledged and acknowledged <= stored


def test_sigkills_lose_no_acknowledged_write_on_postgresql(pg_db_url):
    dbe.upgrade(pg_db_url)
    acknowledged = _kill_runs(pg_db_url, 10, seed=1)
    engine = dbe.make_engine(pg_db_url)
    with dbe.read(engine) as s:
        stored = set(s.scalars(select(Study.study_instance_uid)))
    engine.dispose()
    assert acknowledged and acknowledged <= stored
