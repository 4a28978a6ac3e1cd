"""The failure-case explorer's embedding map of 1,000 images: UMAP against t-SNE, cold and cached.

    nice -n 10 python bench/bench_embedding_map.py [--data DIR] [--n 1000]

Gathers --n shared images (all of NIH, then JSRT, TBX11K and covid_followup's X-ray films, frontal first) into an
evaluation set (a folder of links and a labels CSV, in a temporary data folder with its own database and caches)
and times services.embedding_map.build_map, as the page calls it, with no assertions:

1. cold, UMAP: every image read, checked and embedded (penultimate layer, CPU), then the UMAP map; the first UMAP
   of a process also compiles umap-learn's numba code (timed apart below, from a second UMAP of the same vectors);
2. t-SNE on the same set: the features come from the embedding cache, then the t-SNE map;
3. a revisit of each (the map cache): no feature read, no map computed;
4. both maps again on the same features, with the libraries' default threads and with one thread.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path
from time import perf_counter

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db import engine as dbe  # noqa: E402
from inference import embeddings  # noqa: E402
from inference.registry import Registry  # noqa: E402
from inference.runner import Runner, default_models_dir  # noqa: E402
from services import auth, context, embedding_map, eval_sets, settings  # noqa: E402

MODEL = "cxr15_mobilenetv3@1.0.0"
FRONTAL = ("PA", "AP", "AP Supine")


def gather(data: Path, n: int) -> list[Path]:
    files = sorted((data / "nih" / "images").glob("*.png")) + sorted((data / "jsrt" / "images512").glob("*.png"))
    files += sorted((data / "tbx11k" / "imgs").rglob("*.png"))
    root = data / "covid_followup"
    with open(root / "metadata.csv", newline="") as fh:
        xray = [r for r in csv.DictReader(fh) if r["modality"] == "X-ray"]
    # frontal films first; the shared frontal films are 990, so a few lateral ones make up 1,000
    files += [root / "images" / r["file"] for r in sorted(xray, key=lambda r: r["view"] not in FRONTAL)]
    return list(dict.fromkeys(files))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_models_dir().parent / "data")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    files = gather(args.data, args.n)
    if not files:
        sys.exit(f"no shared images under {args.data} (give --data)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_embedding_map_"))
    try:
        folder = tmp / "images"
        folder.mkdir()
        with open(tmp / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Image Index", "Finding Labels"])
            for f in files:
                name = f"{f.parent.parent.name}_{f.parent.name}_{f.name}"
                (folder / name).symlink_to(f)
                w.writerow([name, "No Finding"])
        s = settings.load({"CXR_REVIEW_DATA_DIR": str(tmp / "data"), "CXR_REVIEW_SETTINGS": "",
                           "CXR_REVIEW_DATASET_ROOTS": os.pathsep.join([str(tmp), str(args.data.resolve())])})  # fmt: skip
        dbe.upgrade(s.db_url)
        ctx = context.build(s)
        auth.add_user(ctx.engine, "bench", "researcher", "a-long-password-1")
        t = perf_counter()
        made = eval_sets.from_folder(ctx, "bench", folder, tmp / "labels.csv", 1)
        print(f"{made.info.n_items} images ({len(made.left_out)} left out) made into a set in "
              f"{perf_counter() - t:.1f} s (not counted below)")  # fmt: skip
        runner = Runner(Registry(default_models_dir()), "cpu")
        runner.load(runner.registry.resolve(MODEL))  # model loading is not what is measured
        print(f"model {MODEL}, layer {embedding_map.LAYER}, CPU, {torch.get_num_threads()} torch threads\n")

        def timed(method: str) -> tuple[embedding_map.MapData, float, float]:
            """(map, seconds until the features were ready, seconds in all)."""
            marks: dict[str, float] = {}
            t0 = perf_counter()

            def progress(text: str, fraction: float) -> None:
                if text.endswith("images") and "map of" in text:
                    marks["features"] = perf_counter() - t0

            data = embedding_map.build_map(ctx, runner, made.info.id, MODEL, method, progress=progress)
            total = perf_counter() - t0
            return data, marks.get("features", 0.0), total

        rows = []
        for label, method in (("cold", "umap"), ("cold (features cached)", "tsne"),
                              ("revisit", "umap"), ("revisit", "tsne")):  # fmt: skip
            data, feat_s, total = timed(method)
            rows.append((embedding_map.METHODS[method], label, data, feat_s, total))
        print(f"{'method':7s} {'visit':24s} {'features s':>10s} {'computed':>9s} {'map s':>7s} {'total s':>8s} "
              f"{'map cached':>10s}")  # fmt: skip
        for name, label, data, feat_s, total in rows:
            map_s = total - feat_s if not data.map_cached else 0.0
            print(f"{name:7s} {label:24s} {feat_s:10.2f} {data.computed:9d} {map_s:7.2f} {total:8.3f} "
                  f"{str(data.map_cached):>10s}")  # fmt: skip
        cold_umap, cold_tsne = rows[0][4], rows[1][4] - rows[1][3]
        print(f"\nrevisit vs cold: UMAP {rows[0][4] / rows[2][4]:.0f}x faster, "
              f"t-SNE {rows[1][4] / rows[3][4]:.0f}x faster")  # fmt: skip

        # The maps alone, side by side on the same vectors, numba already compiled.
        ids, vectors, _, _ = embedding_map.features(
            ctx, runner, made.info, eval_sets.items(ctx, made.info.id), runner.registry.resolve(MODEL)
        )
        times = {}
        for method in ("umap", "tsne"):
            for threads in (None, 1):  # the libraries' default thread count, and one thread (see the README)
                with threadpool_limits(threads):
                    t = perf_counter()
                    embeddings.embedding_map(vectors, method=method)
                    times[method, threads] = perf_counter() - t
        print(f"maps of {len(ids)} x {vectors.shape[1]} features, same process, numba compiled: "
              f"UMAP {times['umap', None]:.2f} s, t-SNE {times['tsne', None]:.2f} s "
              f"(t-SNE / UMAP {times['tsne', None] / times['umap', None]:.2f}x); one thread: "
              f"UMAP {times['umap', 1]:.2f} s, t-SNE {times['tsne', 1]:.2f} s "
              f"({times['tsne', 1] / times['umap', 1]:.2f}x)")  # fmt: skip
        print(f"first UMAP of the process, numba compile included: {cold_umap - rows[0][3]:.2f} s; "
              f"t-SNE map in step 2: {cold_tsne:.2f} s; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
