"""Patient data at rest is readable by the service user only: a new store and database, and an old store
written before that (tightened once, at the next start)."""

import os
import stat

from services import context, importer, settings
from services.store import ImageStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_store_and_database_are_private(app_env, shared_data):
    from db import engine as dbe

    s = settings.load(app_env)
    dbe.upgrade(s.db_url)
    ctx = context.build(s)
    [result] = importer.import_paths(
        ctx.engine,
        ctx.store,
        [shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm"],
        max_bytes=2**30,
    )
    assert result.status == "imported"
    db_file = s.data_dir / "cxr_review.db"
    files = [
        db_file,
        *(p for p in (db_file.with_name(db_file.name + x) for x in ("-wal", "-shm")) if p.exists()),
    ]
    assert len(files) == 3  # WAL mode: SQLite's two side files exist while the engine is open
    assert {str(f): _mode(f) for f in files} == {str(f): 0o600 for f in files}
    objects = [p for p in ctx.store.root.rglob("*")]
    assert objects and {str(p): _mode(p) for p in objects} == {
        str(p): 0o700 if p.is_dir() else 0o600 for p in objects
    }
    assert _mode(s.data_dir) == 0o700 and _mode(ctx.store.root) == 0o700


def test_a_store_written_before_is_tightened_at_the_next_start(tmp_path):
    root = tmp_path / "data" / "objects" / "ab"
    root.mkdir(parents=True)
    old = root / "cdef"
    old.write_bytes(b"an image")
    os.chmod(old, 0o444)
    for d in (root, root.parent, root.parent.parent):
        os.chmod(d, 0o755)
    ImageStore(tmp_path / "data")
    assert (_mode(old), _mode(root), _mode(root.parent), _mode(tmp_path / "data")) == (
        0o600,
        0o700,
        0o700,
        0o700,
    )
    assert old.read_bytes() == b"an image"


def test_the_database_file_of_an_older_install_is_made_private(tmp_path):
    from db import engine as dbe

    url = f"sqlite:///{tmp_path / 'old.db'}"
    dbe.upgrade(url)
    os.chmod(tmp_path / "old.db", 0o644)
    dbe.make_engine(url)
    assert _mode(tmp_path / "old.db") == 0o600


def test_db_upgrade_creates_a_private_database_file(tmp_path):
    from db import engine as dbe

    dbe.upgrade(f"sqlite:///{tmp_path / 'new' / 'fresh.db'}")
    assert (_mode(tmp_path / "new" / "fresh.db"), _mode(tmp_path / "new")) == (0o600, 0o700)
