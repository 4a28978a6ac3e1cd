"""Failure cases page: what one gallery page of tiles costs, against the viewer's full-resolution display PNG of
the same images measured in the same process; and a similar-case search, cold (embeddings computed) and warm
(from the embedding cache).

    python bench/bench_failure_tiles.py [--n 12] [--data DIR]

Setup (not part of the figures): an evaluation set of the first N rows of the NIH labels.csv and a finished run
of cxr15_mobilenetv3@1.0.0 on it (its Grad-CAM heatmaps stored as the viewer stores them).

Measured: services.failure_cases.tile() for every item (read and check the file, default display, resize to 256
px, lay the stored heatmap over it, JPEG), against services.studies.display_png() of the same decoded images (the
viewer's picture; decoding not counted there, so the ratio favours the reference). Bytes are what reaches the
browser per image. No assertions: this prints figures."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from db import engine as dbe  # noqa: E402
from inference.registry import Registry  # noqa: E402
from inference.runner import Runner  # noqa: E402
from services import (  # noqa: E402
    auth,
    context,
    eval_metrics,
    eval_runs,
    eval_sets,
    failure_cases,
    settings,
    studies,
)
from tests.conftest import finished_run, nih_subset_csv  # noqa: E402

MODEL = "cxr15_mobilenetv3@1.0.0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CXR_REVIEW_SHARED_DIR", REPO.parent / "shared")) / "data")
    args = ap.parse_args()
    nih = args.data / "nih"
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CXR_REVIEW_DATA_DIR": tmp, "CXR_REVIEW_SETTINGS": "", "CXR_REVIEW_DATASET_ROOTS": os.pathsep.join([str(nih), tmp]),
               "CXR_REVIEW_MODELS_DIR": os.environ.get("CXR_REVIEW_MODELS_DIR", str(args.data.parent / "models"))}  # fmt: skip
        s = settings.load(env)
        dbe.upgrade(s.db_url)
        ctx = context.build(s)
        auth.add_user(ctx.engine, "bench", "researcher", "bench-password-1")
        runner = Runner(Registry(s.models_dir), s.device)
        info = eval_sets.from_folder(ctx, "bench", nih / "images", nih_subset_csv(nih, args.n, Path(tmp) / "l.csv"), 1).info
        finished_run(ctx, runner, info.id, MODEL)
        sc = eval_metrics.scored(ctx, runner.registry, info.id, MODEL)
        finding = sc.findings[0]

        t0 = time.perf_counter()
        tiles = [failure_cases.tile(ctx, runner, sc.spec, info, it, finding) for it in sc.items]
        t_tiles = time.perf_counter() - t0
        decoded = [eval_runs.load_item(ctx, info, it) for it in sc.items]
        t0 = time.perf_counter()
        full = [studies.display_png(img, None, None, False) for img in decoded]
        t_full = time.perf_counter() - t0
        tile_kb = sum(len(t.jpeg) for t in tiles) / 1024 / len(tiles)
        full_kb = sum(len(p) for p in full) / 1024 / len(full)
        print(f"{len(tiles)} tiles ({finding}, stored heatmaps): {t_tiles * 1000 / len(tiles):.1f} ms and {tile_kb:.0f} KiB (JPEG) "
              f"each; the viewer's display PNG of the same images: {t_full * 1000 / len(full):.1f} ms and {full_kb:.0f} KiB "
              f"each (decoded already); time ratio tile/display {t_tiles / t_full:.2f}, bytes ratio {tile_kb / full_kb:.3f}")

        for what in ("cold", "warm"):
            t0 = time.perf_counter()
            failure_cases.similar_cases(ctx, runner, sc, info, 0, finding, k=5)
            print(f"similar cases of one tile among {len(sc.items)} set images, {what}: {(time.perf_counter() - t0) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
