"""`cxr-review infer` per image after start-up, against a naive reference, side by side in one run.

    python bench/bench_infer.py [--images 12] [--repeats 2] [--threads N] [--images-dir DIR]

Both sides run the whole `infer` path on the same NIH images, one file per call (decode, the quality gate, the
default anatomy, bone suppression and classification versions, Grad-CAM of every finding, boxes, the CTR,
the PNGs and the JSON written): `services.infer.infer_paths`. The two sides differ only in the runner:

- **infer**: the app's `inference.runner.Runner`, float32, conv weights in channels_last on the CPU, Grad-CAM of
  all findings from one backbone pass; also without channels_last, to show what that choice is worth;
- **naive**: the same models and the same pre- and post-processing, but in float64 (weights and tensors), and
  Grad-CAM as usually written: a full forward and backward pass through the network for each finding;
- **naive, float32**: the same without float64, to show how much of the gap is the arithmetic's width.
Outputs are compared with infer's on the same images (probabilities, flags, anatomy pixels).

Models are loaded before timing on both sides ("after start-up"). The images alternate between the sides, so
that load from other processes hits both alike; the figure is the median per image and the ratio naive/infer
(the issue's goal: >= 3x on this 2-core CPU). No assertions: it prints numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.registry import Registry  # noqa: E402
from inference.runner import Runner, as_image, default_models_dir  # noqa: E402
from services import analysis, infer  # noqa: E402

GOAL_RATIO = 3.0


class NaiveRunner(Runner):
    """float64 everywhere (or float32 with `dtype`); one full forward and backward pass per Grad-CAM label."""

    def __init__(self, registry, device="cpu", dtype=torch.float64):
        super().__init__(registry, device, channels_last=False)
        self.dtype = dtype

    def load(self, model_id, version=None):
        module = super().load(model_id, version)
        if next(module.parameters()).dtype != self.dtype:
            with torch.inference_mode(False):  # normal tensors: the per-label Grad-CAM differentiates them
                module.to(self.dtype)  # the cached module itself: converted once
        return module

    def _tensor(self, img):
        return super()._tensor(img).to(self.dtype)

    def _cams(self, img, which, model_id, version=None):
        img = as_image(img)
        spec = self.registry.for_task("classification") if model_id is None else self.registry.lookup(model_id, version)
        model = self.load(spec)
        if which == "top":  # infer never asks for it; kept for the Runner's interface
            return super()._cams(img, which, model_id, version)
        labels = spec.labels if which == "all" else list(which)
        out = {}
        for label in labels:
            with torch.enable_grad():
                x = self.classifier_input([img], spec).requires_grad_(True)
                feats = model.features(x)
                feats.retain_grad()
                model.head(feats)[0, spec.labels.index(label)].backward()
            cam = F.relu((feats.grad.mean(dim=(2, 3), keepdim=True) * feats.detach()).sum(1))[0]
            cam = cam / cam.max() if cam.max() > 0 else cam
            cam = F.interpolate(cam[None, None], size=img.shape, mode="bilinear", align_corners=False)[0, 0]
            out[label] = cam.clamp(0, 1).float().numpy()
        return out


def agreement(out: Path, files: list[Path], names: list[str]) -> dict[str, str]:
    """Each reference's outputs against infer's: largest probability difference, flags that differ, share of
    anatomy pixels labelled alike (the same models, so only arithmetic may differ)."""
    import json

    import cv2

    said = {}
    for name in names[1:]:
        dp, flips, px = 0.0, 0, []
        for f in files:
            a = json.loads((out / "infer" / f"{f.stem}.json").read_text())
            b = json.loads((out / name / f"{f.stem}.json").read_text())
            pa = {x["label"]: x for x in a["findings"] or []}
            for x in b["findings"] or []:
                dp = max(dp, abs(x["probability"] - pa[x["label"]]["probability"]))
                flips += x["positive"] != pa[x["label"]]["positive"]
            if a["anatomy_mask"] and b["anatomy_mask"]:
                ma, mb = (cv2.imread(str(out / n / d["anatomy_mask"]), cv2.IMREAD_UNCHANGED) for n, d in (("infer", a), (name, b)))
                px.append(float((ma == mb).mean()))
        said[name] = f"max |dp| {dp:.1e}, {flips} flag(s) differ, anatomy pixels alike {min(px, default=float('nan')):.5f} (worst image)"
    return said


def nih_images(folder: Path, n: int) -> list[Path]:
    files = sorted(folder.glob("*.png"))[:n]
    if not files:
        raise SystemExit(f"no PNG images in {folder}")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12, help="NIH images per side (default 12)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the images (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--images-dir", type=Path, default=default_models_dir().parent / "data" / "nih" / "images")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = nih_images(args.images_dir, args.images)
    registry = Registry(args.models_dir)
    runners = {
        "infer": Runner(registry, "cpu"),
        "infer, no channels_last": Runner(Registry(args.models_dir), "cpu", channels_last=False),
        "naive": NaiveRunner(Registry(args.models_dir), "cpu"),
        "naive, float32": NaiveRunner(Registry(args.models_dir), "cpu", torch.float32),
    }
    chosen, unavailable = analysis.specs_for(registry, ())
    if unavailable:
        print(f"unavailable (not timed): {unavailable}")
    models = ", ".join(s.ref for s in chosen.values())
    times: dict[str, list[float]] = {k: [] for k in runners}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name, runner in runners.items():  # start-up: load every model, one warm-up image
            list(infer.infer_paths(runner, [files[0]], Path(tmp) / name, max_bytes=1 << 30))
        for _ in range(args.repeats):
            for f in files:
                for name, runner in runners.items():
                    t = perf_counter()
                    (line,) = infer.infer_paths(runner, [f], Path(tmp) / name, max_bytes=1 << 30)
                    times[name].append((perf_counter() - t) * 1000)
                    assert line.status == "done", line
        same = agreement(Path(tmp), files, list(runners))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["naive"] / med["infer"]
    cl_gain = med["infer, no channels_last"] / med["infer"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {len(files)} NIH images x "
          f"{args.repeats} passes per side, alternating; 1-min load average {load:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"models: {models}")
    print(f"outputs against infer's on the same images: {same}")
    print(f"{'':28} {'median ms':>10} {'p90 ms':>8} {'images/s':>9}")
    for k, v in times.items():
        p90 = sorted(v)[int(0.9 * (len(v) - 1))]
        print(f"{k:28} {med[k]:10.1f} {p90:8.1f} {1000 / med[k]:9.2f}")
    print(f"naive float32 / infer: {med['naive, float32'] / med['infer']:.2f}x (what float64 adds is the rest)")
    met = "met" if ratio >= GOAL_RATIO else "MISSED"
    print(f"naive / infer: {ratio:.2f}x (goal >= {GOAL_RATIO:g}x: {met}); channels_last: {cl_gain:.2f}x "
          "(the runner's CPU default, kept only while > 1)")  # fmt: skip


if __name__ == "__main__":
    main()
