from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from db import engine as dbe
from db.models import Base


def test_upgrade_from_empty_creates_every_table_with_sqlite_pragmas(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    dbe.upgrade(url)
    engine = dbe.make_engine(url)
    dbe.check_current(engine)  # raises if not at head
    assert set(inspect(engine).get_table_names()) >= {"users", "studies", "images", "alembic_version"}
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_autogenerate_finds_no_difference_from_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    dbe.upgrade(url)
    with dbe.make_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_an_unmigrated_database_is_reported_with_the_fix(tmp_path):
    engine = dbe.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        dbe.check_current(engine)
    except dbe.DatabaseUnavailable as exc:
        assert "cxr-review db upgrade" in str(exc)
    else:
        raise AssertionError("an empty database passed the schema check")
