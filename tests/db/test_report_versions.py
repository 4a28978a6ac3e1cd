"""Report versions on SQLite and PostgreSQL: the migration moves each `reports` row in as the first version of
its line, every save is a new version, a signed line is locked, amendments by a radiologist or an admin only,
stale saves refused, and the table refuses UPDATE and DELETE."""

import datetime as dt

import pytest
from alembic import command
from sqlalchemy import text

from db import engine as dbe
from db import report_versions as rv
from db.models import ReportStatus


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("pg_db_url")


def _seed(conn) -> None:
    conn.execute(text(
        "INSERT INTO users (id, username, password_hash, role, is_active, must_change_password, created_at) VALUES "
        "(1, 'rad', 'x', 'radiologist', true, false, :t), (2, 'res', 'x', 'researcher', true, false, :t), "
        "(3, 'boss', 'x', 'admin', true, false, :t)"), {"t": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})  # fmt: skip
    conn.execute(text("INSERT INTO studies (id, study_instance_uid, status, created_at) VALUES "
                      "(1, '1.2.3', 'new', :t), (2, '1.2.4', 'new', :t)"),
                 {"t": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})  # fmt: skip


def test_the_migration_makes_each_saved_report_the_first_version_of_its_line(url):
    cfg = dbe.alembic_config(url)
    command.upgrade(cfg, "0006")
    engine = dbe.make_engine(url)
    saved = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    with engine.begin() as conn:
        _seed(conn)
        conn.execute(text("INSERT INTO reports (study_id, reader_id, text, updated_at) VALUES "
                          "(1, 1, 'Old report one.', :t), (2, 2, 'Old report two.', :t)"), {"t": saved})  # fmt: skip
    command.upgrade(cfg, "head")
    with dbe.read(engine) as s:
        one, two = rv.versions(s, 1, 1), rv.versions(s, 2, 2)
        assert "reports" not in set(s.connection().dialect.get_table_names(s.connection()))
    assert [(v.text, v.status, v.author_id, v.parent_id, v.amendment, v.generated, v.created_at) for v in one] == [
        ("Old report one.", ReportStatus.draft, 1, None, False, False, saved)]  # fmt: skip
    assert [v.text for v in two] == ["Old report two."]
    # and back: the newest version of each line is its report again
    command.downgrade(cfg, "0006")
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT study_id, reader_id, text FROM reports")).all()) == [
            (1, 1, "Old report one."), (2, 2, "Old report two.")]  # fmt: skip
    engine.dispose()


def test_versions_sign_off_amendments_and_append_only(url):
    dbe.upgrade(url)
    engine = dbe.make_engine(url)
    with engine.begin() as conn:
        _seed(conn)

    def add(text_, parent, **kw):
        return dbe.write(engine, lambda s: rv.add(s, 1, 1, kw.pop("author", 1), text_, parent_id=parent, **kw).id)

    v1 = add("draft one", None, generated=True)
    v2 = add("draft two", v1, consistency={"skipped": None, "flags": [{"finding": "Effusion", "acknowledged": False}]})
    with pytest.raises(rv.ReportNotSaved, match="changed meanwhile"):
        add("stale", v1)
    with pytest.raises(rv.ReportNotSaved, match="only a signed report is amended"):
        add("amended too early", v2, amendment_reason="typo")
    with pytest.raises(rv.ReportNotSaved, match="signs a report"):
        dbe.write(engine, lambda s: rv.add(s, 2, 2, 2, "mine", parent_id=None, sign=True))
    v3 = add("final words", v2, sign=True)
    with pytest.raises(rv.ReportNotSaved, match="signed and locked"):
        add("after signing", v3)
    with pytest.raises(rv.ReportNotSaved, match="radiologist or an admin"):
        add("researcher amends", v3, amendment_reason="why not", author=2)
    with pytest.raises(rv.ReportNotSaved, match="needs its reason"):
        add("no reason", v3, amendment_reason="  ")
    v4 = add("final words, amended", v3, amendment_reason="laterality corrected", author=3)
    with dbe.read(engine) as s:
        line = rv.versions(s, 1, 1)
        audit = [a for (a,) in s.execute(text("SELECT action FROM audit_events ORDER BY id"))]
    assert [v.id for v in line] == [v1, v2, v3, v4] and [v.parent_id for v in line] == [None, v1, v2, v3]
    assert [v.status for v in line] == [ReportStatus.draft] * 2 + [ReportStatus.final] * 2
    assert [v.generated for v in line] == [True, False, False, False]
    assert (line[2].signed_by_id, line[2].amendment) == (1, False) and line[2].signed_at is not None
    assert (line[3].author_id, line[3].signed_by_id, line[3].amendment, line[3].amendment_reason) == (
        3, 3, True, "laterality corrected")  # fmt: skip
    assert rv.consistency_of(line[1])["flags"][0]["finding"] == "Effusion"
    assert audit == ["report_saved", "report_saved", "report_signed", "report_amended"]
    for statement in ("UPDATE report_versions SET text = 'x'", "DELETE FROM report_versions"):
        with pytest.raises(Exception, match="report_versions is append-only"):
            dbe.write(engine, lambda s, q=statement: s.execute(text(q)))
    engine.dispose()
