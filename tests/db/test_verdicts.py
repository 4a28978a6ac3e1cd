import threading

from sqlalchemy import func, select

from db import accounts, annotations, repo
from db import engine as dbe
from db.models import PredictionItem, Verdict, VerdictEvent
from services import auth, verdicts

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


def _stored_items(ctx) -> dict[tuple[str, str], int]:
    """A stored prediction of MODEL on the image's pixels with two items, as services.analysis stores them."""

    def tx(s):
        p = repo.add_prediction(s, pixel_sha256="1" * 64, model_id=MODEL["model_id"],
                                model_version=MODEL["model_version"], weights_sha256=MODEL["weights_sha256"],
                                task="classification", device="cpu", timings_ms=1.0, result="{}")  # fmt: skip
        return annotations.ensure_items(s, p.id, [
            {"kind": "finding", "key": "Effusion", "label": "Effusion", "score": 0.71, "geometry": None},
            {"kind": "box", "key": "Effusion#0", "label": "Effusion", "score": 0.8,
             "geometry": '{"h": 40, "w": 30, "x": 100, "y": 200}'},
        ])  # fmt: skip

    return dbe.write(ctx.engine, tx)


def _item(key: str, item_id: int | None) -> dict:
    """An AI statement as screens/_ai_panel hands it to services.verdicts."""
    kind = "box" if "#" in key else "finding"
    return {"kind": kind, "key": key, "item_id": item_id, "model": {"id": MODEL["model_id"],
            "version": MODEL["model_version"], "weights_sha256": MODEL["weights_sha256"]}}  # fmt: skip


def test_items_are_stored_once_per_prediction(ctx):
    _setup(ctx)
    ids = _stored_items(ctx)
    assert set(ids) == {("finding", "Effusion"), ("box", "Effusion#0")}
    assert _stored_items(ctx) == ids  # the same prediction again: no new item, the same ids
    with dbe.read(ctx.engine) as s:
        assert s.scalar(select(func.count(PredictionItem.id))) == 2
        (pid,) = set(s.scalars(select(PredictionItem.prediction_id)))
        assert annotations.items_of(s, [pid, pid + 1]) == {pid: ids}  # a prediction without items is absent


def test_a_verdict_records_the_item_it_judges_and_is_found_by_it(ctx):
    study_id, image_id, (reader,) = _setup(ctx)
    ids = _stored_items(ctx)
    box = _item("Effusion#0", ids[("box", "Effusion#0")])
    verdicts.save(ctx.engine, study_id, image_id, reader, [(box, "reject", "wrong location", "too high")])
    with dbe.read(ctx.engine) as s:
        (v,) = repo.verdicts_of(s, image_id, reader)
        assert (v.item_kind, v.item_key, v.prediction_item_id) == ("box", "Effusion#0", box["item_id"])
        # found by the item's id alone, whatever natural key the caller passes
        assert repo.find_verdict(s, image_id, reader, "box", "?", "?", "?", box["item_id"]).id == v.id
        assert repo.find_verdict(s, image_id, reader, "box", "?", "?", "?", ids[("finding", "Effusion")]) is None
    assert verdicts.set_decision(ctx.engine, study_id, image_id, reader, box, "accept") is True
    (mine,) = verdicts.of_reader(ctx.engine, image_id, reader)
    assert (mine.item_id, mine.decision, mine.reason_code) == (box["item_id"], "accept", "wrong location")
    find = verdicts.finder([mine])
    assert find(box) == mine and find(_item("Effusion", ids[("finding", "Effusion")])) is None


def test_a_verdict_written_before_items_existed_is_found_by_its_natural_key_and_then_gets_the_id(ctx):
    study_id, image_id, (reader,) = _setup(ctx)
    old = _verdict(study_id, image_id, reader, key="Effusion", decision="accept", reason_text="large, left")
    dbe.write(ctx.engine, lambda s: repo.upsert_verdict(s, old))  # no item id, as before items were stored
    ids = _stored_items(ctx)
    finding = _item("Effusion", ids[("finding", "Effusion")])
    (mine,) = verdicts.of_reader(ctx.engine, image_id, reader)
    assert mine.item_id is None and verdicts.finder([mine])(finding) == mine  # the viewer still shows it
    assert verdicts.set_decision(ctx.engine, study_id, image_id, reader, finding, "accept") is False  # unchanged
    assert verdicts.set_decision(ctx.engine, study_id, image_id, reader, finding, "reject") is True
    with dbe.read(ctx.engine) as s:
        (v,) = repo.verdicts_of(s, image_id, reader)  # the same row, now pointing at the item
        assert (v.decision.value, v.reason_text) == ("reject", "large, left")
        assert v.prediction_item_id == finding["item_id"]
        assert [e.decision.value for e in repo.verdict_events(s, v.id)] == ["accept", "reject"]
