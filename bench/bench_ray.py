"""`cxr-review infer` on the local engine against the Ray engine, on the same images in the same run.

    python bench/bench_ray.py [--images 100] [--ray-cpus N] [--actors N] [--threads-per-actor N]

Both engines run the whole infer pipeline (decode, gate, anatomy, bone suppression, classifier with Grad-CAM,
PNG and JSON writing) on the first --images NIH PNGs, on the CPU. Local: services.infer.infer_paths in this
process, its models loaded first (one warm-up image, not counted), at torch's default thread count and again at
one thread. Ray: a local Ray (default all of this
machine's CPUs; one actor per CPU but one), timed from the start of the run (actor start-up and model loading
included), with Ray's own start-up printed apart. Prints images/s of each and the ratio Ray / local. No
assertions: figures only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from time import perf_counter

import torch

from inference.registry import Registry
from inference.runner import Runner
from services import infer, ray_engine, settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", REPO.parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--ray-cpus", type=int)
    ap.add_argument("--actors", type=int)
    ap.add_argument("--threads-per-actor", type=int)
    ap.add_argument("--models-dir", default=os.environ.get("CXR_REVIEW_MODELS_DIR", str(SHARED / "models")))
    args = ap.parse_args()
    paths = sorted((SHARED / "data" / "nih" / "images").glob("*.png"))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s = settings.load({"CXR_REVIEW_DATA_DIR": str(tmp / "data"), "CXR_REVIEW_MODELS_DIR": args.models_dir,
                           "CXR_REVIEW_SETTINGS": ""})  # fmt: skip
        runner = Runner(Registry(s.models_dir), "cpu")
        list(infer.infer_paths(runner, paths[:1], tmp / "warm", max_bytes=s.max_upload_bytes))
        default_threads = torch.get_num_threads()
        t = perf_counter()
        local = list(infer.infer_paths(runner, paths, tmp / "local", max_bytes=s.max_upload_bytes))
        local_s = perf_counter() - t
        # The same engine at one torch thread (what each Ray actor uses by default): on a machine loaded by
        # other jobs, torch's threads wait on each other and one thread can be several times faster.
        torch.set_num_threads(1)
        t = perf_counter()
        list(infer.infer_paths(runner, paths, tmp / "local1", max_bytes=s.max_upload_bytes))
        local1_s = perf_counter() - t
        torch.set_num_threads(default_threads)

        t = perf_counter()
        with ray_engine.session(None, args.ray_cpus) as ray:
            start_s = perf_counter() - t
            cpus = int(ray.cluster_resources()["CPU"])
            size, _ = ray_engine.pool_plan(ray, "cpu", args.actors)
            t = perf_counter()
            on_ray = list(ray_engine.infer_paths(ray, s, paths, tmp / "ray", device="cpu", actors=args.actors,
                                                 threads=args.threads_per_actor))  # fmt: skip
            ray_s = perf_counter() - t
        total_s = perf_counter() - t + start_s

    n = len(paths)
    assert sum(x.status == "done" for x in local) == sum(x.status == "done" for x in on_ray) == n
    threads = args.threads_per_actor or 1
    print(f"{n} NIH images, CPU; this machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at "
          f"the end; Ray: {cpus} CPUs, {size} actor(s) x {threads} torch thread(s)")  # fmt: skip
    print(f"{'engine':<28}{'seconds':>10}{'images/s':>10}")
    print(f"{f'local ({default_threads} threads)':<28}{local_s:>10.1f}{n / local_s:>10.2f}")
    print(f"{'local (1 thread)':<28}{local1_s:>10.1f}{n / local1_s:>10.2f}")
    print(f"{'ray (run)':<28}{ray_s:>10.1f}{n / ray_s:>10.2f}")
    print(f"{'ray (start + run + stop)':<28}{total_s:>10.1f}{n / total_s:>10.2f}")
    print(f"Ray start-up: {start_s:.1f} s")
    for name, ref in ((f"local ({default_threads} threads)", local_s), ("local (1 thread)", local1_s)):
        print(
            f"ratio ray / {name} (images/s): run {ref / ray_s:.2f}, with start and stop {ref / total_s:.2f}"
        )


if __name__ == "__main__":
    main()
