"""PACS throughput against a real Orthanc on loopback (Debian's, with its DICOMweb plugin, started here): studies/s of
a QIDO-RS query and of a WADO-RS retrieval into a fresh database and store (one study after another, and as
`pacs retrieve` and the PACS tab do it: the next study downloading while one is imported), compared in the same run
with a plain local import of the same files (the reference: retrieval adds the download to it).

The studies are copies of the shared DX and CR samples (../shared/data/dicom) under new UIDs, one instance each, sent
to Orthanc with dcmtk's storescu before the timing starts.

    python bench/bench_pacs.py [N_STUDIES]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from db import engine as dbe  # noqa: E402
from services import context, importer, pacs, settings  # noqa: E402
from tests.pacs import orthanc_server  # noqa: E402

SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
SOURCES = ("nih_dx_chest_1024_nofinding_nccid.dcm", "siim_cr_chest_pa_1024_jpeg_mono2.dcm")


def _studies(folder: Path, n: int) -> list[Path]:
    """n one-instance studies, alternately DX (uncompressed) and CR (JPEG baseline)."""
    folder.mkdir()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(SHARED / "data" / "dicom" / SOURCES[i % 2])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            generate_uid(),
            generate_uid(),
            generate_uid(),
        )
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"BENCH{i:04d}"
        out.append(folder / f"{i:04d}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def _fresh_ctx(folder: Path, **env) -> context.Context:
    s = settings.load({"CXR_REVIEW_DATA_DIR": str(folder), "CXR_REVIEW_SETTINGS": "", **env})
    dbe.upgrade(s.db_url)
    return context.build(s)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    if orthanc_server.binary() is None or orthanc_server.dicomweb_plugin() is None:
        sys.exit("Orthanc and its DICOMweb plugin are needed (Debian: orthanc orthanc-dicomweb dcmtk)")
    with tempfile.TemporaryDirectory() as tmp, orthanc_server.running(Path(tmp) / "orthanc") as server:
        tmp = Path(tmp)
        files = _studies(tmp / "studies", n)
        mb = sum(f.stat().st_size for f in files) / 2**20
        t0 = time.perf_counter()
        server.store(*files)
        send_s = time.perf_counter() - t0
        cfg = pacs.Config(server.dicomweb, orthanc_server.USER, orthanc_server.PASSWORD, 60, 100)

        t0, rounds = time.perf_counter(), 5
        for _ in range(rounds):
            hits = pacs.query(cfg)
        query_s = (time.perf_counter() - t0) / rounds
        assert len(hits) == n, f"the query found {len(hits)} of {n} studies"

        local = _fresh_ctx(tmp / "local")
        t0 = time.perf_counter()
        local_status = Counter(
            r.status for r in importer.import_paths(local.engine, local.store, files, max_bytes=2**30)
        )
        local_s = time.perf_counter() - t0

        runs = {}
        for label, many in (("pacs retrieve, one study after another", False),
                            ("pacs retrieve, next study downloading", True)):  # fmt: skip
            remote = _fresh_ctx(tmp / label.replace(" ", "_").replace(",", ""))
            uids = [h.study_instance_uid for h in hits]
            t0 = time.perf_counter()
            if many:
                got = list(pacs.retrieve_many(remote, cfg, uids, via="bench"))
            else:
                got = [pacs.retrieve(remote, cfg, uid, via="bench") for uid in uids]
            secs = time.perf_counter() - t0
            assert not any(g.error for g in got), [g.error.message for g in got if g.error]
            runs[label] = (secs, Counter(r.status for g in got for r in g.results))

    print(f"{n} one-instance studies (DX uncompressed / CR JPEG alternately), {mb:.1f} MB, Orthanc on loopback, "
          f"{os.cpu_count()} CPU cores")  # fmt: skip
    print(f"{'run':<42}{'seconds':>9}{'studies/s':>11}  statuses")
    print(f"{'storescu C-STORE into Orthanc (setup)':<42}{send_s:>9.2f}{n / send_s:>11.1f}")
    print(f"{'pacs query (QIDO-RS, all studies, mean)':<42}{query_s:>9.3f}{n / query_s:>11.0f}")
    print(
        f"{'local import of the same files (reference)':<42}{local_s:>9.2f}{n / local_s:>11.1f}  {dict(local_status)}"
    )
    for label, (secs, statuses) in runs.items():
        print(
            f"{label:<42}{secs:>9.2f}{n / secs:>11.1f}  {dict(statuses)}  {secs / local_s:.2f}x the local import's time"
        )


if __name__ == "__main__":
    main()
