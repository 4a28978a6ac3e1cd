"""Migration 0011 on SQLite and PostgreSQL: the per-label threshold edits become one threshold set per model
version, in force; the activation history is append-only; the way down drops the new tables."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from types import SimpleNamespace

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from db import engine as dbe
from db.models import EvalRun, EvalSet, ThresholdSet
from inference.types import ModelSpec
from services import eval_runs, eval_sets, threshold_sets

T = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'w.db'}"
    return request.getfixturevalue("pg_db_url")


def test_per_label_edits_become_a_threshold_set_in_force(url):
    cfg = dbe.alembic_config(url)
    command.upgrade(cfg, "0008")
    engine = dbe.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO users (id, username, password_hash, role, is_active, must_change_password, created_at) "
                "VALUES (1, 'boss', 'x', 'admin', true, false, :t)"), {"t": T})  # fmt: skip
            conn.execute(text(
                "INSERT INTO model_thresholds (model_id, model_version, label, threshold, updated_by_id, updated_at) "
                "VALUES ('m', '1.0.0', 'Mass', 0.25, 1, :t), ('m', '1.0.0', 'Nodule', 0.5, 1, :u), "
                "('n', '2.0.0', 'Edema', 0.75, 1, :t)"), {"t": T, "u": T + dt.timedelta(hours=1)})  # fmt: skip
        command.upgrade(cfg, "head")
        with dbe.read(engine) as s:
            rows = {(r.model_id, r.name): r for r in s.query(ThresholdSet)}
            assert set(rows) == {("m", "m@1.0.0 edits"), ("n", "n@2.0.0 edits")}
            assert json.loads(rows["m", "m@1.0.0 edits"].thresholds) == {"Mass": 0.25, "Nodule": 0.5}
            assert rows["m", "m@1.0.0 edits"].created_at == T + dt.timedelta(hours=1)
        spec = ModelSpec(model_id="m", version="1.0.0", task="classification", labels=("Mass", "Nodule", "Edema"),
                         input_size=(224, 224), normalisation="none", weights_file="w.pt", weights_sha256="a" * 64,
                         intended_use="test", source="test", thresholds={"Mass": 0.1, "Nodule": 0.1, "Edema": 0.1})  # fmt: skip
        with dbe.read(engine) as s:
            force = threshold_sets.in_force_in(s, spec)
        assert force.source == "m@1.0.0 edits v1"
        assert force.thresholds == {"Mass": 0.25, "Nodule": 0.5, "Edema": 0.1}
        with pytest.raises(Exception, match="append-only"):
            dbe.write(engine, lambda s: s.execute(text("DELETE FROM threshold_set_activations")))
        command.downgrade(cfg, "0008")
        assert "threshold_sets" not in inspect(engine).get_table_names()
        with dbe.read(engine) as s:
            assert s.scalar(text("SELECT count(*) FROM model_thresholds")) == 3
    finally:
        engine.dispose()


def _at_head_with_a_researcher(url: str):
    """An engine on a database at the newest schema with user 1 (a researcher), and a context holding it."""
    dbe.upgrade(url)
    engine = dbe.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO users (id, username, password_hash, role, is_active, must_change_password, created_at) "
            "VALUES (1, 'res', 'x', 'researcher', true, false, :t)"), {"t": T})  # fmt: skip
    return engine, SimpleNamespace(engine=engine)


def test_a_run_is_claimed_with_a_token_and_its_staleness_is_read_on_the_database_clock(url):
    engine, ctx = _at_head_with_a_researcher(url)
    try:

        def tx(s):
            s.add(EvalSet(id=1, name="s", version=1, content_sha256="c" * 64, kind="folder", truth_source="csv",
                          findings="[]", n_items=1, report="[]", created_by_id=1))  # fmt: skip
            s.flush()
            s.add(EvalRun(set_id=1, model_id="m", model_version="1", weights_sha256="w" * 64, status="queued",
                          n_total=1, created_by_id=1))  # fmt: skip

        dbe.write(engine, tx)
        run_id, token = eval_runs._claim(ctx)
        with dbe.read(engine) as s:
            now, run = eval_runs.db_now(s), s.get(EvalRun, run_id)
            assert (run.status, run.worker_token) == ("running", token)
            assert now.tzinfo is not None and abs((now - run.heartbeat_at).total_seconds()) < 5
        assert eval_runs.requeue_abandoned(ctx) == 0  # fresh by the database's clock
        later = now + dt.timedelta(seconds=eval_runs.STALE_S + 1)
        assert eval_runs.requeue_abandoned(ctx, now=later) == 1
        with pytest.raises(eval_runs.RunLost):  # the old holder's writes no longer land
            eval_runs._Owner(ctx, run_id, token).write(n_done=1)
        with dbe.read(engine) as s:
            run = s.get(EvalRun, run_id)
            assert (run.status, run.worker_token, run.n_done, run.resumed) == ("queued", None, 0, 1)
    finally:
        engine.dispose()


def test_a_name_saved_twice_at_the_same_time_gets_the_next_version_not_an_error(pg_db_url):
    engine, ctx = _at_head_with_a_researcher(pg_db_url)
    spec = ModelSpec(model_id="m", version="1.0.0", task="classification", labels=("Mass",), input_size=(224, 224),
                     normalisation="none", weights_file="w.pt", weights_sha256="a" * 64, intended_use="test",
                     source="test", thresholds={"Mass": 0.1})  # fmt: skip
    try:
        rows = [eval_sets.Row(pixel_sha256="p" * 64, labels={"Mass": True}, file_name="a.png")]
        saves = {
            "eval set": (EvalSet(name="n", version=1, content_sha256="c" * 64, kind="folder", truth_source="csv",
                                 findings="[]", n_items=1, report="[]", created_by_id=1),
                         lambda: eval_sets.store(ctx, "n", "folder", "csv", rows, ["Mass"], [], 1).info.version),
            "threshold set": (ThresholdSet(name="t", version=1, model_id="m", model_version="1.0.0",
                                           weights_sha256="a" * 64, thresholds="{}", rule="manual", created_by_id=1),
                              lambda: threshold_sets.save(ctx, "t", spec, {"Mass": 0.5}, "manual", 1).version),
        }  # fmt: skip
        for what, (first, second) in saves.items():
            other = Session(engine)  # another request: its version 1 not committed yet
            other.add(first)
            other.flush()
            got = []
            racer = threading.Thread(target=lambda: got.append(second()))  # noqa: B023 - run before the next turn
            racer.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the racer read no version yet and waits on the unique index
                with engine.connect() as c:
                    if c.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")):
                        break
                time.sleep(0.01)
            other.commit()
            other.close()
            racer.join(60)
            assert got == [2], what
    finally:
        engine.dispose()
