"""32 writers at once on a throwaway PostgreSQL server (as tests/db/conftest.py starts one), each doing
read-modify-write units on one shared row and inserts of its own: how many saves fail, how many units were run
again, and how long a save takes, with today's retry policy (db.engine.write) and, in the same run, the policy it
replaced (5 attempts, back-off 0.05 * 2**attempt s with +-50 % jitter, every conflict called "locked").

    python bench/bench_db_contention.py [--writers 32] [--units 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from db import engine as dbe  # noqa: E402
from db import repo  # noqa: E402
from db.models import Study  # noqa: E402
from tests.db.conftest import _admin, _Cluster, _pg_bindir  # noqa: E402


def old_write(engine, fn, attempts=5):
    """db.engine.write as it was before (kept here only as the reference)."""
    for attempt in range(1, attempts + 1):
        try:
            with Session(engine, expire_on_commit=False) as s, s.begin():
                s.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                return fn(s)
        except OperationalError as exc:
            if dbe._conflict(exc) is None:
                raise
            time.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
    raise dbe.DatabaseBusy(attempts)


def run(url: str, write, writers: int, units: int) -> dict:
    engine = dbe.make_engine(url)
    dbe.write(engine, lambda s: repo.get_or_create_study(s, "1.2.hot", patient_age_years=0))
    failures, seconds, start = [], [], threading.Barrier(writers)

    def writer(k):
        own = dbe.make_engine(url)
        start.wait()
        for i in range(units):

            def bump(s):
                study = s.scalar(select(Study).where(Study.study_instance_uid == "1.2.hot"))
                study.patient_age_years += 1

            for fn in (bump, lambda s, i=i: repo.get_or_create_study(s, f"1.2.{k}.{i}")):
                t0 = time.perf_counter()
                try:
                    write(own, fn)
                except dbe.DatabaseBusy as exc:
                    failures.append(str(exc))
                seconds.append(time.perf_counter() - t0)
        own.dispose()

    retried = dbe.retries["40001"] + dbe.retries["40P01"]
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with dbe.read(engine) as s:
        counter = s.scalar(select(Study.patient_age_years).where(Study.study_instance_uid == "1.2.hot"))
    engine.dispose()
    seconds.sort()
    return {
        "saves": len(seconds), "failed": len(failures), "counter": counter, "wall_s": wall,
        "median_ms": 1000 * statistics.median(seconds), "p99_ms": 1000 * seconds[int(0.99 * (len(seconds) - 1))],
        "retries_counted": dbe.retries["40001"] + dbe.retries["40P01"] - retried,
        "message": failures[0] if failures else "",
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--writers", type=int, default=32)
    p.add_argument("--units", type=int, default=20)
    args = p.parse_args()
    bindir = _pg_bindir()
    if bindir is None:
        sys.exit("PostgreSQL server binaries not found (scripts/install.sh installs them as root)")
    import os
    import pwd
    import shutil

    as_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="cxr-pg-bench-", dir="/tmp"))
    if as_user:
        pw = pwd.getpwnam(as_user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    cluster = _Cluster(bindir, root, as_user)
    cluster.start()
    try:
        for label, write in (("before (5 attempts)", old_write), ("now (db.engine.write)", dbe.write)):
            name = "b" + str(abs(hash(label)))[:10]
            _admin(cluster.url("postgres"), f'CREATE DATABASE "{name}"')
            url = cluster.url(name)
            dbe.upgrade(url)
            r = run(url, write, args.writers, args.units)
            expected = args.writers * args.units
            print(
                f"{label:24s} {r['saves']} saves by {args.writers} writers: {r['failed']} failed, shared counter "
                f"{r['counter']}/{expected}, median {r['median_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                f"wall {r['wall_s']:.1f} s"
                + (f", units run again: {r['retries_counted']}" if write is dbe.write else "")
            )
            if r["message"]:
                print(f"{'':24s} first failure: {r['message']}")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
