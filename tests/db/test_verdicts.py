import threading

from sqlalchemy import func, select

from db import accounts, repo
from db import engine as dbe
from db.models import Verdict, VerdictEvent
from services import auth

MODEL = {"model_id": "cxr15_mobilenetv3small_nih", "model_version": "1.0.0", "weights_sha256": "0c" * 32}


def _setup(ctx, readers=1):
    ids = []
    for k in range(readers):
        auth.add_user(ctx.engine, f"reader{k}", "radiologist", "long-enough-pw")

    def tx(s):
        study = repo.get_or_create_study(s, "1.2.3")
        image = repo.add_image(
            s, study, source_format="png", file_sha256="0" * 64, pixel_sha256="1" * 64, file_size=1,
            original_filename="x.png", rows=512, columns=512, bits_stored=8, photometric_interpretation="MONOCHROME2",
        )
        return study.id, image.id

    study_id, image_id = dbe.write(ctx.engine, tx)
    with dbe.read(ctx.engine) as s:
        ids = [accounts.get_user_by_name(s, f"reader{k}").id for k in range(readers)]
    return study_id, image_id, ids


def _verdict(study_id, image_id, reader_id, key="Cardiomegaly", decision="accept", **kw):
    return repo.VerdictIn(
        study_id=study_id, image_id=image_id, reader_id=reader_id, item_kind="finding", item_key=key,
        decision=decision, **MODEL, **kw,
    )


def test_write_change_restart_read_back_with_history(ctx):
    study_id, image_id, (reader,) = _setup(ctx)
    dbe.write(ctx.engine, lambda s: repo.upsert_verdict(s, _verdict(study_id, image_id, reader)))
    dbe.write(
        ctx.engine,
        lambda s: repo.upsert_verdict(
            s, _verdict(study_id, image_id, reader, decision="reject", reason_code="wrong_location", reason_text="apex")
        ),
    )
    ctx.engine.dispose()
    fresh = dbe.make_engine(ctx.settings.db_url)  # as after a restart
    with dbe.read(fresh) as s:
        (v,) = repo.verdicts_of(s, image_id, reader)
        assert (v.decision.value, v.reason_code, v.reason_text) == ("reject", "wrong_location", "apex")
        assert (v.model_id, v.model_version, v.weights_sha256) == tuple(MODEL.values())
        assert v.updated_at.tzinfo is not None
        assert [e.decision.value for e in repo.verdict_events(s, v.id)] == ["accept", "reject"]


def test_sixteen_concurrent_writers_lose_nothing_and_duplicate_nothing(ctx):
    study_id, image_id, readers = _setup(ctx, readers=16)
    errors = []

    def writer(reader_id):
        engine = dbe.make_engine(ctx.settings.db_url)
        try:
            for key in ("Cardiomegaly", "Effusion", "Nodule"):
                for decision in ("accept", "uncertain", "reject"):
                    item = _verdict(study_id, image_id, reader_id, key, decision)
                    dbe.write(engine, lambda s, item=item: repo.upsert_verdict(s, item))
            # every writer also judges the first reader's item as that reader would (same natural key)
            dbe.write(engine, lambda s: repo.upsert_verdict(s, _verdict(study_id, image_id, readers[0], "Shared")))
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with dbe.read(ctx.engine) as s:
        assert s.scalar(select(func.count(Verdict.id))) == 16 * 3 + 1
        assert s.scalar(select(func.count(VerdictEvent.id))) == 16 * 3 * 3 + 16
        finals = {v.decision.value for r in readers for v in repo.verdicts_of(s, image_id, r) if v.item_key != "Shared"}
        assert finals == {"reject"}


def test_a_quick_decision_keeps_the_readers_reason_and_note(ctx):
    """The A/X/U keys and quick buttons change only the decision (services.verdicts.set_decision)."""
    from services import verdicts

    study_id, image_id, (reader,) = _setup(ctx)
    item = {"kind": "finding", "key": "Effusion", "model": {"id": MODEL["model_id"],
            "version": MODEL["model_version"], "weights_sha256": MODEL["weights_sha256"]}}  # fmt: skip
    verdicts.save(ctx.engine, study_id, image_id, reader, [(item, "reject", "wrong_location", "left, not right")])
    assert verdicts.set_decision(ctx.engine, study_id, image_id, reader, item, "accept") is True
    assert verdicts.set_decision(ctx.engine, study_id, image_id, reader, item, "accept") is False  # unchanged
    with dbe.read(ctx.engine) as s:
        (v,) = repo.verdicts_of(s, image_id, reader)
        events = s.scalar(select(func.count()).select_from(VerdictEvent).where(VerdictEvent.verdict_id == v.id))
        assert (v.decision.value, v.reason_code, v.reason_text) == ("accept", "wrong_location", "left, not right")
    assert events == 2  # the form's write and the key's; the unchanged second key wrote nothing
    # What the review screen reads once per rerun: plain values it can use after the session has closed
    # (ORM rows would be expired by then).
    (mine,) = verdicts.of_reader(ctx.engine, image_id, reader)
    assert (mine.item_kind, mine.item_key, mine.decision, mine.reason_code, mine.reason_text) == (
        "finding", "Effusion", "accept", "wrong_location", "left, not right"
    )  # fmt: skip
