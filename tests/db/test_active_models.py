"""The active model version per task: an upsert on the task plus an append-only history, rollback included."""

from sqlalchemy import func, select

from db import accounts, repo
from db import engine as dbe
from db.models import ActiveModelEvent
from services import auth

A = ("cls_a", "1.0.0", "a" * 64)
B = ("cls_b", "2.0.0", "b" * 64)


def _admin(ctx) -> int:
    auth.add_user(ctx.engine, "boss", "admin", "long-enough-pw")
    with dbe.read(ctx.engine) as s:
        return accounts.get_user_by_name(s, "boss").id


def _now(ctx, task="classification"):
    with dbe.read(ctx.engine) as s:
        row = repo.active_model(s, task)
        return None if row is None else (row.model_id, row.model_version, row.weights_sha256)


def test_set_replace_roll_back_and_clear_keep_every_step_in_the_history(ctx):
    boss = _admin(ctx)
    assert _now(ctx) is None
    dbe.write(ctx.engine, lambda s: repo.set_active_model(s, "classification", *A, boss))
    dbe.write(ctx.engine, lambda s: repo.set_active_model(s, "classification", *B, boss))
    dbe.write(ctx.engine, lambda s: repo.set_active_model(s, "segmentation", "seg", "1", "c" * 64, boss))
    assert _now(ctx) == B and _now(ctx, "segmentation") == ("seg", "1", "c" * 64)

    restored = dbe.write(ctx.engine, lambda s: repo.rollback_active_model(s, "classification", boss).model_id)
    assert restored == "cls_a" and _now(ctx) == A
    dbe.write(ctx.engine, lambda s: repo.clear_active_model(s, "classification", boss))
    assert _now(ctx) is None and _now(ctx, "segmentation") is not None
    # rolling back a return to the default restores the choice before it
    dbe.write(ctx.engine, lambda s: repo.rollback_active_model(s, "classification", boss))
    assert _now(ctx) == A

    with dbe.read(ctx.engine) as s:
        history = repo.active_model_history(s, "classification")
        assert [e.model_id for e in history] == ["cls_a", None, "cls_a", "cls_b", "cls_a"]  # newest first
        assert all(e.set_by_id == boss and e.at.tzinfo is not None for e in history)
        assert s.scalar(select(func.count(ActiveModelEvent.id))) == 6
        assert set(repo.active_models(s)) == {"classification", "segmentation"}


def test_rolling_back_the_only_choice_returns_to_the_default_and_nothing_to_roll_back_is_a_no_op(ctx):
    boss = _admin(ctx)
    assert dbe.write(ctx.engine, lambda s: repo.rollback_active_model(s, "classification", boss)) is None
    with dbe.read(ctx.engine) as s:
        assert repo.active_model_history(s, "classification") == []
    dbe.write(ctx.engine, lambda s: repo.set_active_model(s, "classification", *A, boss))
    assert dbe.write(ctx.engine, lambda s: repo.rollback_active_model(s, "classification", boss)) is None
    assert _now(ctx) is None
    with dbe.read(ctx.engine) as s:
        assert [e.model_id for e in repo.active_model_history(s, "classification")] == [None, "cls_a"]
