"""The same code on PostgreSQL: migrations, accounts, import, worklist, timestamps and concurrent writers, each
test on a fresh database of a throwaway server (tests/db/conftest.py), compared with SQLite where it matters."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, inspect, select, text

from db import accounts, repo
from db import engine as dbe
from db.models import Base, Image, PredictionItem, Study, StudyStatus, User, utcnow
from services import auth, importer
from services.store import ImageStore

LIMIT = 50 * 2**20


@pytest.fixture
def pg(pg_db_url):
    """A migrated fresh PostgreSQL database and an engine on it (disposed before the database is dropped)."""
    dbe.upgrade(pg_db_url)
    engine = dbe.make_engine(pg_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def lite(tmp_path):
    """The same on SQLite, for side-by-side comparisons."""
    url = f"sqlite:///{tmp_path / 'lite.db'}"
    dbe.upgrade(url)
    engine = dbe.make_engine(url)
    yield engine
    engine.dispose()


# --- schema ------------------------------------------------------------------------------------------------------
def test_upgrade_from_empty_then_autogenerate_finds_no_difference(pg_db_url):
    engine = dbe.make_engine(pg_db_url)
    try:
        with pytest.raises(dbe.DatabaseUnavailable, match="cxr-review db upgrade"):
            dbe.check_current(engine)
        dbe.upgrade(pg_db_url)
        dbe.check_current(engine)
        dbe.upgrade(pg_db_url)  # a second upgrade is a no-op
        assert engine.dialect.name == "postgresql"
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            # timezone-aware columns really are timestamptz on PostgreSQL
            kinds = dict(
                conn.execute(
                    text(
                        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'studies'"
                    )
                ).all()
            )
        assert kinds["created_at"] == kinds["reviewed_at"] == "timestamp with time zone"
    finally:
        engine.dispose()


# --- accounts ----------------------------------------------------------------------------------------------------
def test_users_and_argon2_sign_in(pg):
    first = auth.ensure_first_admin(pg, None)
    assert first and auth.ensure_first_admin(pg, None) is None
    auth.add_user(pg, "rad", "radiologist", "a-long-password")
    with pytest.raises(auth.AuthError, match="already exists"):
        auth.add_user(pg, "rad", "annotator", "another-long-password")

    me = auth.authenticate(pg, "rad", "a-long-password")
    assert me is not None and (me.username, me.role) == ("rad", "radiologist")
    assert auth.authenticate(pg, "rad", "a-wrong-password") is None
    assert auth.authenticate(pg, "nobody", "a-long-password") is None
    assert auth.authenticate(pg, "admin", first).role == "admin"

    auth.set_password(pg, "rad", "a-new-long-password")
    assert auth.authenticate(pg, "rad", "a-long-password") is None
    assert auth.authenticate(pg, "rad", "a-new-long-password").user_id == me.user_id
    with dbe.read(pg) as s:
        assert [u.username for u in accounts.list_users(s)] == ["admin", "rad"]
        assert accounts.get_user_by_name(s, "rad").password_hash.startswith("$argon2id$")


# --- import ------------------------------------------------------------------------------------------------------
def _import(engine, store, *paths):
    return [r.to_json() for r in importer.import_paths(engine, store, paths, max_bytes=LIMIT)]


def _comparable(results):
    return [{k: v for k, v in r.items() if k not in ("study_id", "image_id")} for r in results]


def test_importing_the_sample_dicoms_gives_the_same_results_as_on_sqlite(pg, lite, shared_data, tmp_path):
    on_pg = _import(pg, ImageStore(tmp_path / "pg"), shared_data / "dicom")
    assert [(r["status"], r["code"]) for r in on_pg] == [
        ("imported", None),
        ("imported", None),
        ("rejected", "uid_conflict"),
    ]
    on_lite = _import(lite, ImageStore(tmp_path / "lite"), shared_data / "dicom")
    assert _comparable(on_pg) == _comparable(on_lite)

    again = _import(pg, ImageStore(tmp_path / "pg"), shared_data / "dicom")
    assert [r["status"] for r in again] == ["duplicate", "duplicate", "rejected"]
    with dbe.read(pg) as s:
        assert s.scalar(select(func.count(Image.id))) == 2
        dx = s.scalar(select(Image).where(Image.original_filename == "nih_dx_chest_1024_nofinding_nccid.dcm"))
        assert dx.modality == "DX" and dx.rows >= 1024 and dx.pixel_spacing_row_mm is None
        assert (dx.study.study_description, dx.study.patient_age_years, dx.study.patient_sex) == (
            "No Finding",
            81,
            "M",
        )
        cr = s.scalar(select(Image).where(Image.modality == "CR"))
        assert (cr.pixel_spacing_row_mm, cr.view_position, cr.study.view_position) == (0.168, "PA", "PA")
        assert cr.imported_at.utcoffset() == dt.timedelta(0)


# --- worklist ----------------------------------------------------------------------------------------------------
N = 600


def _fill(engine):
    """The same studies on either backend, without explicit ids (PostgreSQL's sequences assign them); every
    sort column has NULLs in some rows so that NULLS LAST is exercised both ways."""
    now = utcnow()
    studies = [
        {
            "study_instance_uid": f"1.2.3.{i}",
            "patient_id": f"P{i:05d}",
            "patient_age_years": None if i % 17 == 0 else i % 90,
            "patient_sex": None if i % 13 == 0 else "MF"[i % 2],
            "study_date": None if i % 11 == 0 else dt.date(2020, 1, 1) + dt.timedelta(days=i % 100),
            "study_description": "Chest PA" if i % 5 else "Thorax ap/lat 50%",
            "accession_number": f"ACC{i}",
            "view_position": None if i % 19 == 0 else ("PA" if i % 3 else "AP,LL"),
            "modality": "CR",
            "status": [StudyStatus.new, StudyStatus.in_review, StudyStatus.reviewed][i % 3],
            "created_at": now - dt.timedelta(seconds=i // 2),  # pairs tie: the id breaks them
        }
        for i in range(1, N + 1)
    ]

    def tx(s):
        s.execute(insert(Study), studies)
        ids = dict(s.execute(select(Study.patient_id, Study.id)).all())
        images = [
            {
                "study_id": ids[f"P{i:05d}"],
                "source_format": "dicom",
                "file_sha256": "0" * 64,
                "pixel_sha256": f"{i:064d}",
                "file_size": 1,
                "original_filename": "x.dcm",
                "rows": 512,
                "columns": 512,
                "bits_stored": 8,
                "photometric_interpretation": "MONOCHROME2",
                "warnings": "",
                "imported_at": now,
            }
            for i in range(1, N + 1)
            for _ in range(1 + i % 2)
        ]
        s.execute(insert(Image), images)

    dbe.write(engine, tx)


FILTERS = [
    repo.WorklistFilter(),
    repo.WorklistFilter(status=("new",), sex=("F",), view="ap", age_min=30, age_max=40),
    repo.WorklistFilter(
        status=("in_review", "reviewed"), date_from=dt.date(2020, 2, 1), date_to=dt.date(2020, 3, 1)
    ),
    repo.WorklistFilter(text="p0012"),  # case-insensitive on either backend
    repo.WorklistFilter(text="50%"),  # a LIKE wildcard in the text
    repo.WorklistFilter(view="LL"),
]


def _worklist_by_patient(engine):
    """For every filter and sort, both directions: the total and the patient ids in order, paged."""
    out = {}
    with dbe.read(engine) as s:
        ids = dict(s.execute(select(Study.id, Study.patient_id)).all())
        for k, f in enumerate(FILTERS):
            for sort in repo.SORT_COLUMNS:
                for desc in (False, True):
                    rows, total = repo.list_studies(s, f, sort, desc, 0, 30)
                    more, _ = repo.list_studies(s, f, sort, desc, 30, 30)
                    page = rows + more
                    # next/previous from the first rows follow the same order
                    nxt = [ids.get(repo.neighbour_study(s, r.study_id, f, sort, desc)) for r in page[:1]]
                    prv = [ids.get(repo.neighbour_study(s, r.study_id, f, sort, desc, -1)) for r in page[1:2]]
                    out[k, sort, desc] = (total, [r.patient_id for r in page], nxt, prv)
    return out


def test_worklist_filters_sorts_pages_and_neighbours_match_sqlite(pg, lite):
    _fill(pg)
    _fill(lite)
    on_pg, on_lite = _worklist_by_patient(pg), _worklist_by_patient(lite)
    for key in on_lite:
        assert on_pg[key] == on_lite[key], key

    total, first, nxt, prv = on_pg[0, "imported", True]
    assert total == N and first[:3] == ["P00001", "P00003", "P00002"]  # newest first, then id descending
    assert nxt == first[1:2] and prv == first[:1]
    with dbe.read(pg) as s:
        ids = [s.scalar(select(Study.id).where(Study.patient_id == p)) for p in first[:4]]
        after = [repo.neighbour_study(s, i, repo.WorklistFilter(), "imported", True) for i in ids[:3]]
        before = [repo.neighbour_study(s, i, repo.WorklistFilter(), "imported", True, -1) for i in ids]
        assert after == ids[1:] and before == [None, *ids[:3]]
        for desc in (False, True):  # NULLs last either way
            rows, total = repo.list_studies(s, repo.WorklistFilter(), "age", desc, N - 40, 40)
            nulls = N // 17
            assert total == N and len(rows) == 40
            assert all(r.patient_age_years is None for r in rows[-nulls:])
            assert rows[-nulls - 1].patient_age_years is not None

    with dbe.read(pg) as s:
        f = repo.WorklistFilter(status=("new",), sex=("F",), view="ap", age_min=30, age_max=40)
        rows, total = repo.list_studies(s, f, "age", False, 0, 1000)
        expected = {
            f"P{i:05d}"
            for i in range(1, N + 1)
            if i % 3 == 0 and i % 2 == 1 and i % 13 and i % 17 and i % 19 and 30 <= i % 90 <= 40
        }
        assert total == len(expected) > 0 and {r.patient_id for r in rows} == expected
        assert all(r.status == "new" and r.patient_sex == "F" and r.view_position == "AP,LL" for r in rows)
        assert [r.patient_age_years for r in rows] == sorted(r.patient_age_years for r in rows)
        assert {r.images for r in rows} <= {1, 2}

        rows, total = repo.list_studies(s, repo.WorklistFilter(text="p0012"), "patient_id", False, 0, 50)
        assert [r.patient_id for r in rows] == [f"P0012{d}" for d in range(10)] and total == 10

        oldest = s.scalar(select(Study.id).where(Study.patient_id == f"P{N:05d}"))
        assert repo.neighbour_study(s, oldest, repo.WorklistFilter(), "imported", True) is None
        assert repo.neighbour_study(s, 10**9, repo.WorklistFilter(), "imported", True) is None


def test_priors_link_by_patient_and_issuer_as_on_sqlite(pg, lite):
    """A named Patient ID and the same non-NULL issuer (a NULL issuer links nobody, nor does a placeholder id or
    a disagreeing sex), dates strictly earlier, undated never a prior."""
    day = dt.date(2024, 1, 1)
    studies = [  # (patient, issuer, date, sex)
        ("A", "H1", day, None), ("A", "H1", day + dt.timedelta(days=9), "F"), ("A", "H2", day + dt.timedelta(days=20), None),
        ("A", "H1", None, None), ("B", "H2", day, None), ("B", "H2", day + dt.timedelta(days=1), None), (None, None, day, None),
        (None, None, day + dt.timedelta(days=3), None), ("A", None, day, None), ("A", None, day + dt.timedelta(days=40), None),
        ("ANON", "H1", day, None), (" anon", "H1", day + dt.timedelta(days=2), None), ("C", "H1", day, "F"),
        ("C", "H1", day + dt.timedelta(days=5), "M"), ("00", "H1", day, None), ("00", "H1", day + dt.timedelta(days=1), None),
    ]  # fmt: skip

    def found(engine):
        def tx(s):
            for i, (patient, issuer, date, sex) in enumerate(studies):
                repo.get_or_create_study(s, f"1.2.9.{i}", patient_id=patient, issuer_of_patient_id=issuer,
                                         study_date=date, patient_sex=sex)  # fmt: skip

        dbe.write(engine, tx)
        with dbe.read(engine) as s:
            uid = {st.id: st.study_instance_uid for st in s.scalars(select(Study))}
            rows, _ = repo.list_studies(s, repo.WorklistFilter(), limit=100)
            has = {uid[r.study_id]: r.has_prior for r in rows}
            prior = {uid[i]: (p := repo.prior_study(s, i)) and p.study_instance_uid for i in uid}
            linked = {uid[i]: sorted(x.study_instance_uid for x in repo.patient_studies(s, i)) for i in uid}
        return has, prior, linked

    on_pg = found(pg)
    assert on_pg == found(lite)
    has, prior, linked = on_pg
    assert [k for k, v in sorted(has.items()) if v] == ["1.2.9.1", "1.2.9.5"]
    assert prior["1.2.9.1"] == "1.2.9.0" and prior["1.2.9.5"] == "1.2.9.4" and prior["1.2.9.2"] is None
    assert linked["1.2.9.0"] == ["1.2.9.1", "1.2.9.3"] and linked["1.2.9.7"] == []  # no Patient ID: no link
    assert linked["1.2.9.9"] == [] and linked["1.2.9.11"] == [] and linked["1.2.9.13"] == []  # no issuer, "ANON", sex
    assert linked["1.2.9.15"] == []  # an id of zeros


# --- timestamps --------------------------------------------------------------------------------------------------
def test_timestamps_come_back_timezone_aware_utc_whatever_the_server_timezone(pg):
    # A server in another zone (PostgreSQL sends timestamptz in the session's TimeZone).
    with pg.connect() as conn:
        db = conn.execute(text("SELECT current_database()")).scalar()
        conn.execute(text(f"ALTER DATABASE \"{db}\" SET timezone TO 'America/New_York'"))
        conn.commit()
    pg.dispose()
    with pg.connect() as conn:
        assert conn.execute(text("SHOW timezone")).scalar() == "America/New_York"

    auth.add_user(pg, "rad", "radiologist", "a-long-password")
    instant = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    berlin = instant.astimezone(dt.timezone(dt.timedelta(hours=1)))
    before = utcnow()

    def tx(s):
        study = repo.get_or_create_study(s, "1.2.tz")
        uid = accounts.get_user_by_name(s, "rad").id
        repo.set_study_reviewed(s, study.id, uid)
        s.add(Study(study_instance_uid="1.2.tz.given", created_at=berlin))
        return study.id

    sid = dbe.write(pg, tx)
    with dbe.read(pg) as s:
        study = repo.get_study(s, sid)
        given = s.scalar(select(Study).where(Study.study_instance_uid == "1.2.tz.given"))
        user = accounts.get_user_by_name(s, "rad")
        rows, _ = repo.list_studies(s, repo.WorklistFilter(), "imported", True, 0, 10)
        for value in (
            study.created_at,
            study.reviewed_at,
            given.created_at,
            user.created_at,
            *(r.imported_at for r in rows),
        ):
            assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0), value
            assert value.tzinfo == dt.UTC, value.tzinfo
        assert given.created_at == instant and str(given.created_at) == "2026-01-02 03:04:05.678901+00:00"
        assert before <= study.created_at <= utcnow() and study.reviewed_at >= study.created_at
        # The server holds the instant itself, not a wall-clock reading.
        epoch = s.scalar(select(func.extract("epoch", Study.created_at)).where(Study.id == given.id))
        assert float(epoch) == pytest.approx(instant.timestamp())
    with pytest.raises(Exception, match="naive datetime"):
        dbe.write(
            pg, lambda s: s.add(Study(study_instance_uid="1.2.naive", created_at=dt.datetime(2026, 1, 1)))
        )


# --- concurrency -------------------------------------------------------------------------------------------------
def test_eight_concurrent_writers_lose_nothing_and_duplicate_nothing(pg, pg_db_url):
    """Under SERIALIZABLE, PostgreSQL aborts the losers of each race with SQLSTATE 40001; every unit is run
    again until it commits, so nothing is lost, duplicated or reported as failed."""
    errors = []
    start = threading.Barrier(8)
    retried = dbe.retries["40001"]

    def writer(k):
        engine = dbe.make_engine(pg_db_url)  # one engine per writer, as separate processes would have
        try:
            start.wait()
            for i in range(10):
                # Every writer also races for the same shared study: exactly one row may exist for it.
                dbe.write(engine, lambda s, i=i: repo.get_or_create_study(s, f"1.2.{k}.{i}"))
                dbe.write(engine, lambda s: repo.get_or_create_study(s, "1.2.shared"))

                # and for a read-modify-write of one row: no update may be lost
                def bump(s):
                    study = repo.get_or_create_study(s, "1.2.counter", patient_age_years=0)
                    study.patient_age_years += 1

                dbe.write(engine, bump)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with dbe.read(pg) as s:
        assert s.scalar(select(func.count(Study.id))) == 8 * 10 + 2
        assert s.scalar(select(func.count(Study.id)).where(Study.study_instance_uid == "1.2.shared")) == 1
        counter = s.scalar(select(Study).where(Study.study_instance_uid == "1.2.counter"))
        assert counter.patient_age_years == 8 * 10
        assert s.scalar(select(func.count(User.id))) == 0
    assert dbe.retries["40001"] > retried  # the races really happened, and were run again


def test_ai_items_are_stored_once_under_concurrent_first_views_and_verdicts_point_at_them(pg, pg_db_url):
    """Eight readers open a study whose prediction has no items yet (stored before items existed): each stores
    them in one unit; the losers of the race run again and find them, so every reader gets the same ids. A
    verdict then points at its item, and one written before items existed gets the id when written again."""
    from db import annotations
    from services import verdicts

    model = {"model_id": "cxr15_mobilenetv3", "model_version": "1.0.0", "weights_sha256": "0c" * 32}
    auth.add_user(pg, "rad", "radiologist", "a-long-password")

    def setup(s):
        study = repo.get_or_create_study(s, "1.2.items")
        image = repo.add_image(
            s, study, source_format="png", file_sha256="0" * 64, pixel_sha256="1" * 64, file_size=1,
            original_filename="x.png", rows=512, columns=512, bits_stored=8, photometric_interpretation="MONOCHROME2",
        )  # fmt: skip
        pred = repo.add_prediction(s, pixel_sha256="1" * 64, task="classification", device="cpu", timings_ms=1.0,
                                   result="{}", **model)  # fmt: skip
        return study.id, image.id, pred.id, accounts.get_user_by_name(s, "rad").id

    study_id, image_id, pid, reader = dbe.write(pg, setup)
    items = [
        {"kind": "finding", "key": f"L{i}", "label": f"L{i}", "score": i / 20, "geometry": None} for i in range(14)
    ]
    box = '{"h": 4, "w": 3, "x": 1, "y": 2}'
    items.append({"kind": "box", "key": "L1#0", "label": "L1", "score": 0.7, "geometry": box})
    got, errors = [], []
    start = threading.Barrier(8)

    def first_view():
        engine = dbe.make_engine(pg_db_url)
        try:
            start.wait()
            got.append(dbe.write(engine, lambda s: annotations.ensure_items(s, pid, items)))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=first_view) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 8 and all(g == got[0] for g in got) and len(got[0]) == 15
    with dbe.read(pg) as s:
        assert s.scalar(select(func.count()).select_from(PredictionItem)) == 15
        ref = (model["model_id"], model["model_version"], model["weights_sha256"])
        assert repo.get_predictions(s, "1" * 64, [ref, ("other", "1", "0" * 64)])[ref].id == pid

    # an old verdict (no item id), then the viewer's quick key on the item
    dbe.write(pg, lambda s: repo.upsert_verdict(s, repo.VerdictIn(
        study_id=study_id, image_id=image_id, reader_id=reader, item_kind="finding", item_key="L3",
        decision="accept", reason_code="other", **model)))  # fmt: skip
    item = {"kind": "finding", "key": "L3", "item_id": got[0][("finding", "L3")],
            "model": {"id": model["model_id"], "version": model["model_version"],
                      "weights_sha256": model["weights_sha256"]}}  # fmt: skip
    (mine,) = verdicts.of_reader(pg, image_id, reader)
    assert mine.item_id is None and verdicts.finder([mine])(item) == mine
    assert verdicts.set_decision(pg, study_id, image_id, reader, item, "reject") is True
    with dbe.read(pg) as s:
        (v,) = repo.verdicts_of(s, image_id, reader)
        assert (v.decision.value, v.reason_code, v.prediction_item_id) == ("reject", "other", item["item_id"])
        assert repo.find_verdict(s, image_id, reader, "finding", "?", "?", "?", item["item_id"]).id == v.id


def test_writes_run_serializable_and_reads_stay_read_committed(pg):
    def level(s):
        return s.scalar(text("SHOW transaction_isolation"))

    for _ in range(3):  # the pooled connection is handed back at its default level after every write
        assert dbe.write(pg, level) == "serializable"
        with dbe.read(pg) as s:
            assert level(s) == "read committed"


# --- serialization failures are retried, and named when they persist ---------------------------------------------
def test_a_persistent_serialization_failure_names_its_cause_and_saves_nothing(pg, pg_db_url):
    dbe.write(pg, lambda s: repo.get_or_create_study(s, "1.2.hot", patient_age_years=0))
    other = dbe.make_engine(pg_db_url)

    def bump_with_a_rival_commit_in_between(s):
        study = s.scalar(select(Study).where(Study.study_instance_uid == "1.2.hot"))
        # Another writer commits a change to the same row after this unit read it: a serialization failure.
        dbe.write(other, lambda o: o.execute(text("UPDATE studies SET patient_age_years = patient_age_years + 100")))
        study.patient_age_years += 1

    try:
        with pytest.raises(dbe.DatabaseBusy) as caught:
            dbe.write(pg, bump_with_a_rival_commit_in_between, attempts=3)
    finally:
        other.dispose()
    assert caught.value.cause == "40001"
    assert "serialization failure, SQLSTATE 40001" in str(caught.value) and "3 times" in str(caught.value)
    assert "locked" not in str(caught.value)
    with dbe.read(pg) as s:  # only the rival's three commits
        assert s.scalar(select(Study.patient_age_years).where(Study.study_instance_uid == "1.2.hot")) == 300


def test_the_audit_is_append_only_on_postgresql_too(pg):
    auth.add_user(pg, "rad", "radiologist", "long-enough-pw")
    for statement in ("UPDATE audit_events SET action = 'sign_in'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="audit_events is append-only"):
            dbe.write(pg, lambda s, q=statement: s.execute(text(q)))
    with dbe.read(pg) as s:
        assert s.scalar(text("SELECT count(*) FROM audit_events")) == 1
        triggers = set(s.scalars(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")))
    assert triggers == {f"{t}_append_only" for t in ("audit_events", "verdict_events", "active_model_events",
                                                     "annotation_versions", "report_versions",
                                                     "threshold_set_activations")}  # fmt: skip


def test_lockout_after_ten_failures_on_postgresql(pg):
    auth.add_user(pg, "rad", "radiologist", "long-enough-pw")
    results = [auth.authenticate(pg, "rad", "wrong password!") for _ in range(auth.LOCKOUT_FAILURES)]
    assert isinstance(results[-1], auth.Locked) and results[:-1] == [None] * (auth.LOCKOUT_FAILURES - 1)
    assert isinstance(auth.authenticate(pg, "rad", "long-enough-pw"), auth.Locked)
    assert auth.unlock(pg, "rad") and auth.authenticate(pg, "rad", "long-enough-pw").username == "rad"


def test_a_quality_gate_override_is_stored_once_per_reader_and_gate_version_and_audited(pg, shared_data, tmp_path):
    from db.models import GateOverride
    from services import gate_overrides

    _import(pg, ImageStore(tmp_path / "pg"), shared_data / "dicom")
    auth.add_user(pg, "rad", "radiologist", "long-enough-pw")
    with dbe.read(pg) as s:
        image_id = s.scalar(select(Image.id).limit(1))
        rad_id = s.scalar(select(User.id).where(User.username == "rad"))
    gate = {"passed": False, "reasons": ["lateral view"], "model": {"id": "quality_gate", "version": "1.0.0",
                                                                    "weights_sha256": "a" * 64}}  # fmt: skip
    first = gate_overrides.record(pg, image_id, rad_id, gate, "readable")
    again = gate_overrides.record(pg, image_id, rad_id, gate, "another reason")  # the first one stays
    assert first.reason == again.reason == "readable"
    assert gate_overrides.of_reader(pg, image_id, rad_id, gate).reason == "readable"
    newer = gate | {"model": gate["model"] | {"version": "1.1.0"}}
    assert gate_overrides.of_reader(pg, image_id, rad_id, newer) is None  # a new gate version asks again
    with dbe.read(pg) as s:
        assert s.scalar(select(func.count(GateOverride.id))) == 1
        assert s.scalar(text("SELECT count(*) FROM audit_events WHERE action = 'gate_overridden'")) == 1
