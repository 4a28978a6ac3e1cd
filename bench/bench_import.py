"""Import of the sample set (../shared/data: 3 DICOMs + the NIH PNGs) into a fresh database: files/s.
Compared in the same run with the bare cost of reading the same files (the floor import cannot beat), and
with a re-import, which must recognise every file as a duplicate.

    python bench/bench_import.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db import engine as dbe  # noqa: E402
from services import context, importer, settings  # noqa: E402

SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    folders = [SHARED / "data" / "dicom", SHARED / "data" / "nih" / "images"]
    files = list(importer.iter_input_files(folders))
    total_mb = sum(f.stat().st_size for f in files) / 2**20
    t0 = time.perf_counter()
    for f in files:
        f.read_bytes()
    read_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        s = settings.load({"CXR_REVIEW_DATA_DIR": tmp, "CXR_REVIEW_SETTINGS": ""})
        dbe.upgrade(s.db_url)
        ctx = context.build(s)
        runs = {}
        for label in ("first import", "re-import (duplicates)"):
            t0 = time.perf_counter()
            statuses = Counter(
                r.status for r in importer.import_paths(ctx.engine, ctx.store, folders, max_bytes=s.max_upload_bytes)
            )
            runs[label] = (time.perf_counter() - t0, statuses)

    print(f"sample set: {len(files)} files, {total_mb:.1f} MB, {os.cpu_count()} CPU cores")
    print(f"{'run':<26}{'seconds':>9}{'files/s':>10}  statuses")
    print(f"{'read bytes only (floor)':<26}{read_s:>9.2f}{len(files) / read_s:>10.0f}")
    for label, (secs, statuses) in runs.items():
        print(f"{label:<26}{secs:>9.2f}{len(files) / secs:>10.1f}  {dict(statuses)}")


if __name__ == "__main__":
    main()
