import datetime as dt

from sqlalchemy import insert

from db import accounts, repo
from db import engine as dbe
from db.models import Image, Study, StudyStatus, utcnow

N = 12_000


def _fill(engine):
    now = utcnow()
    studies = [
        {
            "id": i,
            "study_instance_uid": f"1.2.3.{i}",
            "patient_id": f"P{i:05d}",
            "patient_age_years": i % 90,
            "patient_sex": "MF"[i % 2],
            "study_date": dt.date(2020, 1, 1) + dt.timedelta(days=i % 1000),
            "view_position": "PA" if i % 3 else "AP",
            "modality": "CR",
            "status": [StudyStatus.new, StudyStatus.in_review, StudyStatus.reviewed][i % 3],
            "created_at": now - dt.timedelta(seconds=i),
        }
        for i in range(1, N + 1)
    ]
    images = [
        {
            "study_id": i, "source_format": "dicom", "file_sha256": "0" * 64, "pixel_sha256": f"{i:064d}",
            "file_size": 1, "original_filename": "x.dcm", "rows": 512, "columns": 512, "bits_stored": 8,
            "photometric_interpretation": "MONOCHROME2", "warnings": "", "imported_at": now,
        }
        for i in range(1, N + 1)
    ]
    dbe.write(engine, lambda s: (s.execute(insert(Study), studies), s.execute(insert(Image), images)))


def test_worklist_filters_sorts_and_pages_twelve_thousand_studies(ctx):
    _fill(ctx.engine)
    with dbe.read(ctx.engine) as s:
        rows, total = repo.list_studies(s, repo.WorklistFilter(), "imported", True, 0, 50)
        assert total == N and len(rows) == 50 and rows[0].patient_id == "P00001"
        last, _ = repo.list_studies(s, repo.WorklistFilter(), "imported", True, N - 10, 50)
        assert len(last) == 10 and last[-1].patient_id == f"P{N:05d}"

        f = repo.WorklistFilter(status=("new",), sex=("F",), view="ap", age_min=30, age_max=40)
        rows, total = repo.list_studies(s, f, "age", False, 0, 1000)
        expected = [i for i in range(1, N + 1) if i % 3 == 0 and i % 2 == 1 and 30 <= i % 90 <= 40]
        assert total == len(expected) > 0
        assert all(r.status == "new" and r.patient_sex == "F" and r.view_position == "AP" for r in rows)
        assert [r.patient_age_years for r in rows] == sorted(r.patient_age_years for r in rows)

        found, total = repo.list_studies(s, repo.WorklistFilter(text="P0123"), "imported", True, 0, 50)
        assert total == 10 and all(r.patient_id.startswith("P0123") for r in found)
        # What a user types is matched literally: "_" and "%" are not SQL wildcards.
        assert repo.list_studies(s, repo.WorklistFilter(text="P_012"), "imported", True, 0, 50)[1] == 0
        assert repo.list_studies(s, repo.WorklistFilter(text="P0%1"), "imported", True, 0, 50)[1] == 0


def test_next_study_follows_the_worklist_order_and_stops_at_the_end(ctx):
    _fill(ctx.engine)
    f = repo.WorklistFilter(view="PA")
    with dbe.read(ctx.engine) as s:
        page, _ = repo.list_studies(s, f, "study_date", False, 0, 3)
        assert repo.neighbour_study(s, page[0].study_id, f, "study_date", False) == page[1].study_id
        assert repo.neighbour_study(s, page[1].study_id, f, "study_date", False, -1) == page[0].study_id
        assert repo.neighbour_study(s, page[0].study_id, f, "study_date", False, -1) is None


def test_review_status_records_reader_and_time(ctx):
    from services import auth

    auth.add_user(ctx.engine, "rad", "radiologist", "a-long-password")
    _fill(ctx.engine)
    with dbe.read(ctx.engine) as s:
        user_id = accounts.get_user_by_name(s, "rad").id
    dbe.write(ctx.engine, lambda s: repo.set_study_reviewed(s, 1, user_id))
    with dbe.read(ctx.engine) as s:
        rows, _ = repo.list_studies(s, repo.WorklistFilter(text="P00001"), "imported", True, 0, 5)
        study = repo.get_study(s, 1)
        assert rows[0].status == "reviewed" and rows[0].reviewed_by == "rad"
        assert study.reviewed_at.tzinfo is not None
