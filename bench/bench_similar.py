"""Similar-case search: exact numpy search against an index library, and how often it finds the same patient.

    python bench/bench_similar.py [--data DIR] [--n 10000] [--queries 200] [--threads 1]

Prints, with no assertions:

1. embedding and 2-D map (t-SNE) of up to 1,000 real images (covid_followup frontal films, then NIH, then JSRT),
   read through the checks of import as `cxr-review similar` reads them;
2. query latency (k=10, one query at a time) over --n embeddings: numpy brute force (inference.embeddings.nearest,
   what the command uses) against faiss (exact IndexFlatL2, and HNSW at two search depths), each index's build
   time, and the recall of each index against the exact answer. The --n vectors are the real embeddings plus
   jittered copies of them (Gaussian noise of the size of a real nearest-neighbour distance, renormalised), so
   that neighbourhoods look like real ones;
3. the follow-up check: for every frontal film of a covid_followup patient with two or more of them, is one of
   that patient's other films among the first 1 / 5 found among all 356 frontal films? Per film and per patient
   (at least one of the patient's films finds another), for each layer of inference.embeddings.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from time import perf_counter

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference import embeddings  # noqa: E402
from inference.registry import Registry  # noqa: E402
from inference.runner import Runner, default_models_dir  # noqa: E402
from services import analysis, importer, similar  # noqa: E402

FRONTAL = ("PA", "AP", "AP Supine")
MAX_BYTES = 200 * 2**20


def covid_frontal(data: Path) -> tuple[list[Path], list[str]]:
    root = data / "covid_followup"
    rows = [
        r
        for r in csv.DictReader((root / "metadata.csv").open())
        if r["modality"] == "X-ray" and r["view"] in FRONTAL
    ]
    return [root / "images" / r["file"] for r in rows], [r["patientid"] for r in rows]


def hit_rates(vectors: np.ndarray, patients: list[str], shas: list[str], ks=(1, 5)) -> dict:
    """Share of films (and of patients) of patients with 2+ films whose first k neighbours (the film itself and
    copies of its pixels left out, as the command does) hold another film of the same patient."""
    counts = Counter(patients)
    queries = [i for i, p in enumerate(patients) if counts[p] >= 2]
    out: dict = {"films": len(queries), "patients": len({patients[i] for i in queries})}
    for k in ks:
        found = similar.nearest_others(vectors, shas, vectors[queries], [shas[i] for i in queries], k)
        per_film, per_patient = [], {}
        for q, near in zip(queries, found, strict=True):
            hit = any(patients[j] == patients[q] for j, _ in near)
            per_film.append(hit)
            per_patient[patients[q]] = per_patient.get(patients[q], False) or hit
        out[f"hit@{k}_films"] = float(np.mean(per_film))
        out[f"hit@{k}_patients"] = float(np.mean(list(per_patient.values())))
    return out


def timed_queries(fn, queries: np.ndarray) -> float:
    """Median ms of fn(one query) over all queries, after one warm-up."""
    fn(queries[:1])
    times = []
    for q in queries:
        t = perf_counter()
        fn(q[None])
        times.append((perf_counter() - t) * 1000)
    return statistics.median(times)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_models_dir().parent / "data")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP threads for the search (default 1)")
    args = ap.parse_args()
    if not (args.data / "covid_followup" / "metadata.csv").is_file():
        sys.exit(f"no covid_followup under {args.data} (give --data)")
    runner = Runner(Registry(default_models_dir()), "cpu")
    rng = np.random.default_rng(0)

    # 1. Embedding and 2-D map of up to 1,000 real images.
    files, patients = covid_frontal(args.data)
    n_covid = len(files)
    files += sorted((args.data / "nih" / "images").glob("*.png")) + sorted(
        (args.data / "jsrt" / "images512").glob("*.png")
    )
    files = files[:1000]
    cache = Path(
        tempfile.mkdtemp(prefix="bench_similar_")
    )  # the embedding cache of this run (removed at the end)
    t = perf_counter()
    real, ref = similar.embed_files(runner, files, cache, max_bytes=MAX_BYTES)
    embed_s = perf_counter() - t
    t = perf_counter()
    again, _ = similar.embed_files(runner, files, cache, max_bytes=MAX_BYTES)
    cached_s = perf_counter() - t
    t = perf_counter()
    xy = embeddings.embedding_map(real.vectors)
    map_s = perf_counter() - t
    print(f"model {ref.model_id}@{ref.version} ({ref.weights_sha256[:12]}), layer {embeddings.DEFAULT_LAYER}, "
          f"dimension {real.vectors.shape[1]}")  # fmt: skip
    print(f"{len(real.files)} images: read + embed {embed_s:.1f} s ({real.computed} computed); "
          f"second run {cached_s:.1f} s ({again.computed} computed, {again.cached} cached); "
          f"2-D map (t-SNE) {map_s:.1f} s -> {xy.shape}")  # fmt: skip

    # 2. Index library against numpy at --n embeddings.
    import faiss

    v = real.vectors
    d1 = embeddings.nearest(v, v, 2)[1][:, 1]  # each real embedding's distance to its nearest other one
    sigma = float(np.median(d1)) / (2 * np.sqrt(v.shape[1]))  # noise of norm ~ half that distance

    def synthetic(n: int) -> np.ndarray:
        """Points between two random real embeddings (up to halfway), plus noise, on the unit sphere."""
        a, b = v[rng.integers(0, len(v), n)], v[rng.integers(0, len(v), n)]
        t = rng.uniform(0, 0.5, (n, 1)).astype(np.float32)
        return embeddings.l2_normalise(a + t * (b - a) + rng.normal(0, sigma, a.shape).astype(np.float32))

    gallery = np.concatenate([v, synthetic(args.n - len(v))]).astype(np.float32)
    queries = synthetic(args.queries)
    k = 10
    rows = []
    with threadpool_limits(args.threads):
        faiss.omp_set_num_threads(args.threads)

        def measure(name: str, build, search) -> None:
            t = perf_counter()
            index = build()
            build_s = perf_counter() - t
            one_ms = timed_queries(lambda q: search(index, q), queries)
            t = perf_counter()
            found = search(index, queries)
            batch_ms = (perf_counter() - t) * 1000 / len(queries)
            rows.append((name, build_s, one_ms, batch_ms, found))

        measure(
            "numpy brute force (exact)",
            lambda: embeddings.ExactIndex(gallery),
            lambda ix, q: ix.search(q, k)[0],
        )

        def flat():
            ix = faiss.IndexFlatL2(gallery.shape[1])
            ix.add(gallery)
            return ix

        measure("faiss IndexFlatL2 (exact)", flat, lambda ix, q: ix.search(q, k)[1])
        for ef in (16, 64):

            def hnsw(ef=ef):
                ix = faiss.IndexHNSWFlat(gallery.shape[1], 32)
                ix.hnsw.efConstruction = 40
                ix.add(gallery)
                ix.hnsw.efSearch = ef
                return ix

            measure(f"faiss HNSW M=32 efSearch={ef}", hnsw, lambda ix, q: ix.search(q, k)[1])
    exact = rows[0][4]
    print(f"\n{args.n} embeddings of {gallery.shape[1]} values ({len(v)} real, the rest between two real ones), "
          f"k={k}, {args.queries} queries, {args.threads} thread(s):")  # fmt: skip
    print(f"{'method':32s} {'build s':>8s} {'1 query ms':>11s} {'vs numpy':>9s} {'batch ms/query':>15s} "
          f"{'recall@10':>10s}")  # fmt: skip
    for name, build_s, one_ms, batch_ms, found in rows:
        print(f"{name:32s} {build_s:8.2f} {one_ms:11.3f} {one_ms / rows[0][2]:8.2f}x {batch_ms:15.3f} "
              f"{recall(found, exact):10.3f}")  # fmt: skip

    # 3. Same patient's other film among all covid_followup frontal films, per layer.
    print(
        f"\nfollow-up: {n_covid} frontal films of covid_followup, the query and copies of its pixels left out"
    )
    covid_files = files[:n_covid]
    for layer in embeddings.LAYERS:
        emb, _ = similar.embed_files(runner, covid_files, cache, max_bytes=MAX_BYTES, layer=layer)
        kept = [patients[i] for i, f in enumerate(covid_files) if str(f) in emb.files]
        report(layer, hit_rates(emb.vectors, kept, emb.pixel_sha256))
    shutil.rmtree(cache)
    # A reference without the classifier: the same picture shrunk to 32 x 32, mean image removed.
    imgs = [analysis.model_input(importer.load_checked(f, max_bytes=MAX_BYTES)) for f in covid_files]
    thumbs = np.stack([cv2.resize(i, (32, 32), interpolation=cv2.INTER_AREA).ravel() for i in imgs])
    report(
        "pixels 32x32",
        hit_rates(embeddings.l2_normalise(thumbs - thumbs.mean(0)), patients, emb.pixel_sha256),
    )


def report(name: str, rates: dict) -> None:
    print(f"  {name:12s} {rates['films']} films of {rates['patients']} patients: "
          f"hit@1 {rates['hit@1_films']:.3f} (patients {rates['hit@1_patients']:.3f}), "
          f"hit@5 {rates['hit@5_films']:.3f} (patients {rates['hit@5_patients']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
