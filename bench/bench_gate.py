"""The quality gate's cost per image, beside references measured in the same run on the same images.

    python bench/bench_gate.py [--images 40] [--repeats 3] [--models-dir DIR]

Per image (real NIH films, their display picture already decoded): the gate (Runner.quality_gate: resize to
64x64, one forward pass, verdict), against decoding the file into the models' picture (what every analysis pays
first) and against the findings classifier's forward pass (Runner.classify, without Grad-CAM). Median ms over
the images, best of --repeats; CPU, one thread per torch op as torch chooses. No assertions: figures only.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from time import perf_counter

from inference.registry import Registry
from inference.runner import Runner
from services import analysis
from viewer import dicom_io

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", REPO.parent / "shared"))


def per_image_ms(fn, items, repeats: int) -> float:
    best = []
    for item in items:
        times = []
        for _ in range(repeats):
            t = perf_counter()
            fn(item)
            times.append((perf_counter() - t) * 1000)
        best.append(min(times))
    return statistics.median(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models-dir", default=os.environ.get("CXR_REVIEW_MODELS_DIR", str(SHARED / "models")))
    args = ap.parse_args()
    runner = Runner(Registry(args.models_dir), "cpu")
    gate = runner.registry.for_task("quality_gate")
    cls = runner.registry.for_task("classification")
    paths = sorted((SHARED / "data" / "nih" / "images").glob("*.png"))[: args.images]
    pictures = [analysis.model_input(dicom_io.load(p)) for p in paths]
    runner.quality_gate(pictures[0], gate), runner.classify(pictures[0], cls)  # load both once
    decode = per_image_ms(lambda p: analysis.model_input(dicom_io.load(p)), paths, args.repeats)
    gate_ms = per_image_ms(lambda x: runner.quality_gate(x, gate), pictures, args.repeats)
    cls_ms = per_image_ms(lambda x: runner.classify(x, cls), pictures, args.repeats)

    def net_ms(x) -> float:  # the gate's own phases, best of the repeats like the figures beside it
        runs = (runner.quality_gate(x, gate).timings_ms for _ in range(args.repeats))
        return min(t["preprocess"] + t["forward"] for t in runs)

    net = statistics.median(net_ms(x) for x in pictures)
    print(
        f"{len(paths)} NIH images (512x512), median per image, best of {args.repeats}, device {runner.device}"
    )
    print(f"  quality gate {gate.ref:<28} {gate_ms:8.2f} ms")
    print(f"    of which resize + forward pass {net:8.2f} ms (the rest: the registry's version and sha256 check)")
    print(
        f"  decode to the models' picture (reference) {decode:8.2f} ms   gate / decode     = {gate_ms / decode:.2f}"
    )
    print(f"  classifier {cls.ref:<30} {cls_ms:8.2f} ms   gate / classifier = {gate_ms / cls_ms:.2f}")


if __name__ == "__main__":
    main()
