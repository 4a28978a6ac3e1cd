"""Evaluation workbench: time from "Run" to the first ROC on the NIH images whose results are cached, against an
uncached run measured in the same process.

    python bench/bench_evalset.py [--n 435] [--boot 1000] [--reference 8] [--data DIR]

Setup (timed, but not part of the figure): an evaluation set of the first N rows of the NIH labels.csv (images
decoded once to hash their pixels), and the predictions cache filled for cxr15_mobilenetv3@1.0.0 on all of them
(batched classification, scores only: no Grad-CAM, so the setup stays within a few CPU-minutes; what the run
reads from a cached result is the scores either way).

Measured: services.eval_runs.start() (the page's Run button) -> the background worker finds every result cached ->
done -> the scores read back -> the first finding's curves with `--boot` resamples -> the plotly ROC figure. The
page itself polls the run once a second, which this does every 20 ms, so a browser sees up to 1 s more.

Reference, same process: a run of another version (cxr14_mobilenetv3_multilabel@1.0.0) on `--reference` uncached
images, what every image costs without the cache (classification, Grad-CAM, PNGs, rows), extrapolated to N.
No assertions: this prints figures."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import delete  # noqa: E402

from db import engine as dbe  # noqa: E402
from db.models import Prediction  # noqa: E402
from inference.registry import Registry  # noqa: E402
from inference.runner import Runner  # noqa: E402
from services import (  # noqa: E402
    analysis,
    auth,
    context,
    eval_figures,
    eval_metrics,
    eval_runs,
    eval_sets,
    settings,
)

CACHED, OTHER = "cxr15_mobilenetv3@1.0.0", "cxr14_mobilenetv3_multilabel@1.0.0"


def auth_has_users(ctx) -> bool:
    from db import accounts

    with dbe.read(ctx.engine) as s:
        return bool(accounts.list_users(s))


def _wait(ctx, run_ids: list[int]) -> None:
    while any(eval_runs.get(ctx, r).status in ("queued", "running") for r in run_ids):
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=435)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--reference", type=int, default=8)
    ap.add_argument("--data", type=Path, default=None, help="a data folder (default: a temporary one)")
    args = ap.parse_args()
    shared = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", REPO.parent / "shared"))
    nih = shared / "data" / "nih"
    models = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", shared / "models"))
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-evalset-"))
    s = settings.load({"CXR_REVIEW_DATA_DIR": str(data), "CXR_REVIEW_MODELS_DIR": str(models),
                       "CXR_REVIEW_SETTINGS": "", "CXR_REVIEW_DATASET_ROOTS": os.pathsep.join([str(nih), str(data)])})  # fmt: skip
    dbe.upgrade(s.db_url)
    ctx = context.build(s)
    if not auth_has_users(ctx):
        auth.add_user(ctx.engine, "bench", "researcher", "bench-password-1")
    runner = Runner(Registry(models), "cpu")

    with open(nih / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for _, r in zip(range(args.n), reader, strict=False)]
    subset = data / "subset.csv"
    with open(subset, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    t = time.perf_counter()
    made = eval_sets.from_folder(ctx, "bench", nih / "images", subset, 1)
    t_set = time.perf_counter() - t
    items = eval_sets.items(ctx, made.info.id)
    n = len(items)

    # fill the cache (setup): batched scores of the cached version on every image
    spec = runner.registry.resolve(CACHED)
    t = time.perf_counter()
    with dbe.read(ctx.engine) as sess:  # a --data folder of an earlier run has them already
        have = eval_runs.stored_refs(sess, [it.pixel_sha256 for it in items], spec)
    todo = [it for it in items if it.pixel_sha256 not in have]
    for i in range(0, len(todo), 16):
        chunk = todo[i : i + 16]
        xs = [analysis.model_input(eval_runs.load_item(ctx, made.info.folder, it)) for it in chunk]
        for it, res in zip(chunk, runner.classify_batch(xs, spec), strict=True):
            result = {"model": spec.provenance(), "timings_ms": {"total": res.timings_ms.get("total", 0.0)},
                      "score_kind": res.score_kind, "probabilities": res.probabilities}  # fmt: skip
            analysis.store_result(ctx, "classification", spec, it.pixel_sha256, result, "cpu")
    t_seed = time.perf_counter() - t

    # measured: Run -> the first ROC, every result cached
    t0 = time.perf_counter()
    run_ids = eval_runs.start(ctx, runner, made.info.id, [CACHED], 1)
    _wait(ctx, run_ids)
    t_run = time.perf_counter() - t0
    run = eval_runs.get(ctx, run_ids[0])
    scored = eval_metrics.scored(ctx, runner.registry, made.info.id, CACHED)
    t_read = time.perf_counter() - t0 - t_run
    finding = scored.findings[0]
    report = eval_metrics.finding_report(scored, finding, spec.thresholds.get(finding), args.boot)
    t_curves = time.perf_counter() - t0 - t_run - t_read
    eval_figures.roc(report, spec.provenance()).to_json()
    t_total = time.perf_counter() - t0
    # what the page computes besides on its first metrics view: the summary of every finding, the subgroups
    t = time.perf_counter()
    eval_metrics.summary_rows(scored, dict(spec.thresholds), args.boot)
    eval_metrics.subgroups(scored, finding, "sex", args.boot)
    t_view = time.perf_counter() - t

    # reference: an uncached run of another version on the first --reference images
    ref_rows = rows[: args.reference]
    ref_csv = data / "reference.csv"
    with open(ref_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(ref_rows)
    ref_set = eval_sets.from_folder(ctx, "bench-reference", nih / "images", ref_csv, 1)
    other = runner.registry.resolve(OTHER)
    hashes = [it.pixel_sha256 for it in eval_sets.items(ctx, ref_set.info.id)]
    dbe.write(ctx.engine, lambda sess: sess.execute(delete(Prediction).where(  # uncached, also with --data
        Prediction.pixel_sha256.in_(hashes), Prediction.model_id == other.model_id,
        Prediction.model_version == other.version)))  # fmt: skip
    runner.classify(analysis.model_input(eval_runs.load_item(ctx, ref_set.info.folder, items[0])), OTHER)  # loaded
    t = time.perf_counter()
    _wait(ctx, eval_runs.start(ctx, runner, ref_set.info.id, [OTHER], 1))
    per_image = (time.perf_counter() - t) / ref_set.info.n_items

    print(f"evaluation set: {n} NIH images ({len(made.left_out)} rows left out), made in {t_set:.1f} s "
          f"({t_set / n * 1000:.0f} ms per image: decode + pixel hash)")
    print(f"setup, cache filled (batched scores, no Grad-CAM): {t_seed:.1f} s for {len(todo)} images not cached yet")
    print(f"run -> done, all cached: {t_run * 1000:.0f} ms ({run.n_reused} of {run.n_total} reused)")
    print(f"scores read back: {t_read * 1000:.0f} ms")
    print(f"first finding ({finding}, {report['n_pos']} positive) curves with {args.boot} resamples: "
          f"{t_curves * 1000:.0f} ms")
    print(f"ROC figure built: {(t_total - t_run - t_read - t_curves) * 1000:.0f} ms (first plotly figure of the process)")
    print(f"RUN -> FIRST ROC (cached): {t_total:.2f} s for {n} images")
    print(f"the rest of the first metrics view (summary of {len(scored.findings)} findings, subgroups by sex): "
          f"{t_view:.2f} s -> the whole view {t_total + t_view:.2f} s")
    print(f"reference, uncached run of {OTHER}: {per_image * 1000:.0f} ms per image "
          f"-> {per_image * n:.0f} s for {n} images")
    print(f"ratio uncached / cached: {per_image * n / t_total:.0f}x")


if __name__ == "__main__":
    main()
