"""Priors: lung-mask registration per real pair, and opening a study together with its prior, server side.

Real pairs: the frontal films of the covid_followup patients with two or more, imported into a throwaway
database with their metadata (as start.sh does). Per study that has a prior:
  - alone: what the viewer does to open a study (load the file, render at the default window, encode the PNG);
  - with prior: the prior lookup in the database, then the same for both films, the prior fitted into the
    current film's frame (the compare pane), both PNGs encoded.
Registration: viewer.registration.register on the hand-drawn lung masks of each patient's first two films that
have them (the app registers the AI's masks; same sizes, same code), and the difference picture after it.
Median (and 90th percentile) over the pairs, after one warm-up; ratios against "alone" in the same run.

    python bench/bench_priors.py
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db import engine as dbe  # noqa: E402
from db import repo  # noqa: E402
from scripts.followup_films import films  # noqa: E402
from services import context, importer, priors, settings, sidecar, studies  # noqa: E402
from viewer import dicom_io, export, registration, windowing  # noqa: E402

SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FOLDER = SHARED / "data" / "covid_followup"


def _stats(ms: list[float]) -> tuple[float, float]:
    return statistics.median(ms), float(np.percentile(ms, 90))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def registration_pairs() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(current lungs, prior lungs, current picture, prior picture) of each patient's first two masked films."""
    by_patient = defaultdict(list)
    with open(FOLDER / "metadata.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["lung_mask"] and row["view"].upper() in ("PA", "AP", "AP SUPINE") and row["modality"] == "X-ray":
                by_patient[row["patientid"]].append(row)
    pairs = []
    for rows in by_patient.values():
        if len(rows) < 2:
            continue
        read = lambda d, r: cv2.imread(str(FOLDER / d / r), cv2.IMREAD_GRAYSCALE)  # noqa: E731
        prior, current = rows[0], rows[1]
        pairs.append((read("lung_masks", current["lung_mask"]) > 127, read("lung_masks", prior["lung_mask"]) > 127,
                      read("images", current["file"]), read("images", prior["file"])))  # fmt: skip
    return pairs


def bench_registration(alone_ms: float) -> None:
    pairs = registration_pairs()
    reg_ms, diff_ms, refused = [], [], 0
    registration.register(*pairs[0][:2])  # warm-up
    for cur_lungs, pri_lungs, cur, pri in pairs:
        if cur.shape != cur_lungs.shape or pri.shape != pri_lungs.shape:
            continue
        t0 = time.perf_counter()
        reg = registration.register(cur_lungs, pri_lungs)
        reg_ms.append((time.perf_counter() - t0) * 1000)
        if not reg.ok:
            refused += 1
            continue
        t0 = time.perf_counter()
        export.png_bytes(priors.difference_picture(cur, pri, reg.matrix, cur_lungs))
        diff_ms.append((time.perf_counter() - t0) * 1000)
    (rm, r90), (dm, d90) = _stats(reg_ms), _stats(diff_ms)
    print(f"registration, {len(reg_ms)} real pairs (hand-drawn lung masks, films up to 1024 px):")
    print(f"  register          median {rm:7.1f} ms   p90 {r90:7.1f} ms   ({refused} refused)   "
          f"ratio {rm / alone_ms:.2f}x opening a study alone")
    print(f"  difference + PNG  median {dm:7.1f} ms   p90 {d90:7.1f} ms")


def bench_open() -> float:
    """Prints the opening times and returns the median of opening a study alone (the reference)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = settings.load({"CXR_REVIEW_DATA_DIR": tmp, "CXR_REVIEW_SETTINGS": ""})
        dbe.upgrade(s.db_url)
        ctx = context.build(s)
        meta = sidecar.load(FOLDER / "metadata.csv", issuer="ieee8023-covid-chestxray", day_zero=dt.date(2020, 1, 1))
        list(importer.import_paths(ctx.engine, ctx.store, films(FOLDER / "metadata.csv", FOLDER / "images"),
                                   max_bytes=2**30, metadata=meta))  # fmt: skip
        with dbe.read(ctx.engine) as sess:
            rows, _ = repo.list_studies(sess, repo.WorklistFilter(), limit=1000)
            opened = {r.study_id: repo.study_images(sess, r.study_id)[0].file_sha256 for r in rows if r.has_prior}

        def alone(sha: str) -> np.ndarray:
            img = dicom_io.load(ctx.store.path_for(sha))
            studies.display_png(img, None, None, False)
            return img

        def with_prior(study_id: int, sha: str) -> None:
            img = alone(sha)
            prior = priors.find(ctx.engine, study_id)
            prior_img = dicom_io.load(ctx.store.path_for(prior.image["file_sha256"]))
            picture = priors.prior_picture(windowing.render(prior_img), (img.header.rows, img.header.columns), None)
            export.png_bytes(picture)

        first = next(iter(opened.items()))
        with_prior(*first)  # warm-up
        t_alone = [_timed(lambda sha=sha: alone(sha)) for sha in opened.values()]
        t_both = [_timed(lambda i=i, sha=sha: with_prior(i, sha)) for i, sha in opened.items()]
    (am, a90), (bm, b90) = _stats(t_alone), _stats(t_both)
    print(f"opening a study, server side, {len(opened)} covid_followup studies with a prior (JPEG, up to 1024 px):")
    print(f"  alone (reference)  median {am:7.1f} ms   p90 {a90:7.1f} ms")
    print(f"  with its prior     median {bm:7.1f} ms   p90 {b90:7.1f} ms   ratio {bm / am:.2f}x the study alone")
    return am


if __name__ == "__main__":
    if not (FOLDER / "metadata.csv").is_file():
        sys.exit(f"no covid_followup data at {FOLDER} (set CXR_REVIEW_SHARED_DIR)")
    bench_registration(bench_open())
