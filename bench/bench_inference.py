"""Inference latency and memory: the cached runner against a naive reference, side by side.

    python bench/bench_inference.py [--repeats 5] [--device cpu|cuda|auto] [--batch 16] [--models-dir DIR]

The naive reference re-reads, re-hashes and re-builds the model on every call, preprocesses in float64 with
numpy/opencv, runs one image at a time and computes Grad-CAM with autograd through the whole backbone, once per
label. Timings alternate between the two in one process; peak RSS comes from one child process per variant (all
models loaded plus one study), so that each figure is its own. No assertions: this prints numbers, and the
issue's goal beside those that have one:

- per model latency at its input size, and of each trained anatomy version (input size, test-time views);
- a new study to all overlays through services.analysis (decode, every model, Grad-CAM of every finding,
  boxes, PNGs into the image store, rows into a real SQLite file): goal <= 1.5 s;
- a revisit of that study (services.analysis.analyse_cached: everything from the database): goal <= 100 ms;
- peak RSS with all models loaded and one study analysed: goal <= 1.5 GB;
- throughput in studies/s with `--batch N` studies at a time (the batched runner calls; on `--device cuda`
  the models run on the GPU), against the naive reference one study at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

import cv2
import numpy as np
import torch

from inference.device import resolve_device
from inference.postprocess import LUNGS, cardiothoracic_ratio, clean_label_map, clip_to_mask, heatmap_boxes
from inference.registry import Registry
from inference.runner import Runner, default_models_dir
from viewer import dicom_io, export

SEG, BONE, CLS = "anatomy_unet_jsrt", "bone_suppression_ae", "cxr15_mobilenetv3"
SMP_SEG = "anatomy_unet_smp"  # trained by this project (assets/models)
GOALS_MS = {"new study": 1500.0, "revisit": 100.0}
GOAL_RSS_MIB = 1.5 * 1024


def median_ms(fns: dict[str, Callable], repeats: int) -> dict[str, float]:
    """Median wall time of each function; one warm-up each, then rounds that alternate between them so that
    load from other processes on a shared machine hits every variant alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = perf_counter()
            fn()
            times[name].append((perf_counter() - t) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


def chest_image(size: int) -> np.ndarray:
    """A real radiograph when the shared data is there (NIH, 512 px, upsampled), else smooth noise."""
    path = default_models_dir().parent / "data" / "nih" / "images" / "00000550_000.png"
    u8 = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if u8 is None:
        u8 = cv2.GaussianBlur(
            np.random.default_rng(0).integers(0, 255, (512, 512), dtype=np.uint8), (0, 0), 8
        )
    return np.clip(cv2.resize(u8.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)


class Naive:
    """The straightforward way: no cache, float64 numpy preprocessing, full autograd for Grad-CAM."""

    def __init__(self, models_dir: Path):
        self.registry = Registry(models_dir)

    def load(self, model_id: str) -> torch.nn.Module:
        spec = self.registry.get(model_id)
        data = self.registry.weights_path(model_id).read_bytes()
        if hashlib.sha256(data).hexdigest() != spec.weights_sha256:
            raise RuntimeError(f"{model_id}: sha256 mismatch")
        model = self.registry.builder(model_id)()
        model.load_state_dict(
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), strict=True
        )
        return model.eval()

    @staticmethod
    def to_input(img: np.ndarray, size: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        x = cv2.resize(img.astype(np.float64), (size, size), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(((x - mean) / std).astype(np.float32))[None, None]

    def seg(self, img: np.ndarray) -> np.ndarray:
        model, (h, w) = self.load(SEG), img.shape
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        square = np.zeros((side, side), np.float64)
        square[top : top + h, left : left + w] = img
        with torch.no_grad():
            logits = model(self.to_input(square, 512))[0].numpy().astype(np.float64)
        up = np.stack([cv2.resize(c, (side, side), interpolation=cv2.INTER_LINEAR) for c in logits])
        return clean_label_map(up[:, top : top + h, left : left + w].argmax(0).astype(np.uint8))

    def bone(self, img: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.load(BONE)(self.to_input(img, 512))[0, 0].numpy().astype(np.float64)
        return np.clip(cv2.resize(out, img.shape[::-1], interpolation=cv2.INTER_LINEAR), 0, 1)

    def classify(self, img: np.ndarray) -> str:
        spec = self.registry.get(CLS)
        with torch.no_grad():
            logits = (
                self.load(CLS)(self.to_input(img, 224, spec.mean, spec.std))[0].numpy().astype(np.float64)
            )
        probs = np.exp(logits - logits.max())
        return spec.labels[int(np.argmax(probs / probs.sum()))]

    def gradcam(self, img: np.ndarray, label: str) -> np.ndarray:
        spec, model = self.registry.get(CLS), self.load(CLS)
        feats = model.features(self.to_input(img, 224, spec.mean, spec.std))
        feats.retain_grad()
        model.head(feats)[0, spec.labels.index(label)].backward()
        cam = torch.relu((feats.grad.mean(dim=(2, 3), keepdim=True) * feats).sum(1))[0].detach().numpy()
        cam = cv2.resize(cam.astype(np.float64), img.shape[::-1], interpolation=cv2.INTER_LINEAR)
        return (cam / cam.max() if cam.max() > 0 else cam).astype(np.float32)


def variants(models_dir: Path, device: str) -> tuple[dict, dict]:
    """(runner, naive): the four calls of each as seg(img) -> labels, bone(img), classify(img) -> top label,
    gradcam(img, label); the runner with its models already loaded."""
    runner, naive = Runner(Registry(models_dir), device), Naive(models_dir)
    fast = {
        "seg": lambda i: runner.segment_anatomy(i).label_map,
        "bone": lambda i: runner.suppress_bones(i).soft_tissue,
        "classify": lambda i: runner.classify(i).top_label,
        "gradcam": runner.gradcam,
        "runner": runner,
    }
    return fast, {"seg": naive.seg, "bone": naive.bone, "classify": naive.classify, "gradcam": naive.gradcam}


def study(v: dict, img: np.ndarray) -> None:
    """Every overlay of a newly opened study."""
    label_map = v["seg"](img)
    v["bone"](img)
    heat = clip_to_mask(v["gradcam"](img, v["classify"](img)), label_map == LUNGS)
    cardiothoracic_ratio(label_map)
    heatmap_boxes(heat)


def naive_analysis(naive: Naive, path: Path) -> None:
    """What services.analysis computes for a new study, the naive way: decode, each model (re-loaded per call),
    Grad-CAM once per finding label with full autograd, boxes, every picture PNG-encoded; no database."""
    from services.analysis import BOX_THRESHOLD, model_input

    img = model_input(dicom_io.load(path))
    label_map = naive.seg(img)
    export.png_bytes(label_map)
    export.png_bytes(np.round(naive.bone(img) * 255).astype(np.uint8))
    naive.classify(img)
    lungs = label_map == LUNGS
    for label in naive.registry.get(CLS).labels:
        if label != "No Finding":
            cam = clip_to_mask(naive.gradcam(img, label), lungs)
            heatmap_boxes(cam, BOX_THRESHOLD)
            export.png_bytes(np.round(cam * 255).astype(np.uint8))
    cardiothoracic_ratio(label_map)


def analysis_timings(models_dir: Path, device: str, repeats: int) -> list[tuple[str, float, float | None]]:
    """New study and revisit through services.analysis on a real SQLite file and image store (temporary)."""
    from sqlalchemy import delete

    from db import engine as dbe
    from db.models import Image, Prediction
    from services import analysis, context, importer, settings

    src = default_models_dir().parent / "data" / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    with tempfile.TemporaryDirectory() as tmp:
        if not src.is_file():  # no shared data: a 1024 x 1024 PNG instead
            src = Path(tmp) / "chest.png"
            export.write_png(src, np.round(chest_image(1024) * 255).astype(np.uint8))
        env = {"CXR_REVIEW_DATA_DIR": f"{tmp}/data", "CXR_REVIEW_MODELS_DIR": str(models_dir),
               "CXR_REVIEW_SETTINGS": ""}  # fmt: skip
        s = settings.load(env)
        dbe.upgrade(s.db_url)
        ctx = context.build(s)
        res = importer.import_file(ctx.engine, ctx.store, src, max_bytes=1 << 30)
        with dbe.read(ctx.engine) as sess:
            row = sess.get(Image, res.image_id)
            image = {"id": res.image_id, "pixel_sha256": row.pixel_sha256, "file_sha256": row.file_sha256}
        runner, naive = Runner(Registry(models_dir), device), Naive(models_dir)
        for model_id in (SEG, BONE, CLS):
            runner.load(model_id)

        def forget() -> None:
            """Make the study new again: no prediction rows, none of their pictures in the store."""
            dbe.write(ctx.engine, lambda sess: sess.execute(delete(Prediction)))
            objects = ctx.store.root
            for d in objects.iterdir():
                for f in d.iterdir():
                    if f.name != image["file_sha256"][2:]:
                        f.unlink()

        def new_study() -> None:
            forget()
            t = perf_counter()
            result = analysis.analyse(ctx, runner, image)
            new_ms.append((perf_counter() - t) * 1000)
            assert len(result.computed_now) == 3, result.unavailable

        new_ms: list[float] = []
        m = median_ms({"fast": new_study, "naive": lambda: naive_analysis(naive, src)}, repeats)
        rows = [("new study -> all overlays, analysis", statistics.median(new_ms[1:]), m["naive"],
                 GOALS_MS["new study"])]  # fmt: skip
        analysis.analyse(ctx, runner, image)
        revisit = median_ms({"r": lambda: analysis.analyse_cached(ctx, runner, image)}, max(repeats, 20))["r"]
        rows.append(("revisit (cached; naive recomputes)", revisit, m["naive"], GOALS_MS["revisit"]))
        ctx.engine.dispose()
    return rows


def throughput(models_dir: Path, device: str, batch: int, repeats: int) -> list[tuple]:
    """Studies/s with the batched runner calls (`batch` studies at a time) against the naive reference one
    study at a time. The anatomy model uses per-image batch statistics, so it runs image by image."""
    from services.analysis import BOX_THRESHOLD, heatmaps_and_boxes

    runner, naive = Runner(Registry(models_dir), device), Naive(models_dir)
    cls = runner.registry.get(CLS)
    labels = [label for label in cls.labels if label != "No Finding"]
    imgs = [chest_image(1024) for _ in range(batch)]

    def fast() -> None:
        maps = [runner.segment_anatomy(i).label_map for i in imgs]
        runner.suppress_bones_batch(imgs)
        runner.classify_batch(imgs)
        for img, label_map in zip(imgs, maps, strict=True):
            heatmaps_and_boxes(runner, img, cls, label_map == LUNGS)
            cardiothoracic_ratio(label_map)

    def slow() -> None:
        img = imgs[0]
        label_map = naive.seg(img)
        naive.bone(img)
        naive.classify(img)
        for label in labels:
            heatmap_boxes(clip_to_mask(naive.gradcam(img, label), label_map == LUNGS), BOX_THRESHOLD)
        cardiothoracic_ratio(label_map)

    m = median_ms({"fast": fast, "naive": slow}, max(1, repeats // 2))
    return [(f"studies/s, batch of {batch} (1024 px)", 1000 * batch / m["fast"], 1000 / m["naive"], None)]


def timings(models_dir: Path, device: str, repeats: int) -> list[tuple[str, float, float | None]]:
    fast, naive = variants(models_dir, device)
    runner = fast["runner"]
    t = perf_counter()
    for model_id in (SEG, BONE, CLS):
        runner.load(model_id)
    rows = [("load all models (cold, once)", (perf_counter() - t) * 1000, None)]

    def forward(model_id, size, batch=1):
        model, x = runner.load(model_id), torch.rand(batch, 1, size, size, device=runner.device)

        def go():
            with torch.inference_mode():
                model(x)
            if runner.device.type == "cuda":
                torch.cuda.synchronize()

        return go

    for name, fn, per in [
        ("forward anatomy 1x512", forward(SEG, 512), 1),
        ("forward bone 1x512", forward(BONE, 512), 1),
        ("forward classifier 1x224", forward(CLS, 224), 1),
        ("forward classifier 16x224, per image", forward(CLS, 224, 16), 16),
    ]:
        rows.append((name, median_ms({"f": fn}, repeats)["f"] / per, None))

    img512, img224, img1024 = chest_image(512), chest_image(224), chest_image(1024)
    calls = {
        "segment_anatomy, 512 in": lambda v: v["seg"](img512),
        "suppress_bones, 512 in": lambda v: v["bone"](img512),
        "classify, 224 in": lambda v: v["classify"](img224),
        "gradcam, 224 in": lambda v: v["gradcam"](img224, "Cardiomegaly"),
        "new study, all overlays, 1024x1024": lambda v: study(v, img1024),
    }
    for name, call in calls.items():
        m = median_ms({"fast": lambda c=call: c(fast), "naive": lambda c=call: c(naive)}, repeats)
        rows.append((name, m["fast"], m["naive"]))
    batch = median_ms({"b": lambda: runner.classify_batch([img1024] * 16)}, repeats)["b"] / 16
    rows.append(("classify_batch 16 x 1024 in, per image", batch, None))
    # The project's trained anatomy versions, for an admin choosing one: input size and test-time views
    # (model.json) set their cost; compare with "segment_anatomy, 512 in" above (the built-in model).
    for spec in [s for s in runner.registry.available() if s.model_id == SMP_SEG]:  # usable ones only
        views = len(spec.test_time_views) or 1
        ms = median_ms({"v": lambda s=spec: runner.segment_anatomy(img512, s)}, repeats)["v"]
        rows.append(
            (f"segment_anatomy {spec.ref} ({spec.input_size[0]} px, {views} view(s)), 512 in", ms, None)
        )
    return rows


def peak_rss_mib() -> float:
    # VmHWM, not getrusage's ru_maxrss: a child started by subprocess inherits the parent's ru_maxrss on Linux,
    # which made both variants report the bench process's own peak.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def peak_rss_child(variant: str, models_dir: Path, device: str) -> None:
    """Prints the peak RSS and the part of it above what importing torch & co. already took."""
    after_imports = peak_rss_mib()
    fast, naive = variants(models_dir, device)
    if variant == "fast":
        for model_id in (SEG, BONE, CLS):
            fast["runner"].load(model_id)
    study(fast if variant == "fast" else naive, chest_image(1024))
    print(peak_rss_mib(), peak_rss_mib() - after_imports)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per figure (median), after 1 warm-up"
    )
    parser.add_argument("--device", default="cpu", help="runner device (the naive reference is always CPU)")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument(
        "--batch", type=int, help="studies per batch for the studies/s figure (default: 16 on CUDA, else 4)"
    )
    parser.add_argument("--rss-of", choices=["fast", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of:
        return peak_rss_child(args.rss_of, args.models_dir, args.device)

    load_before = os.getloadavg()[0]
    rows = [(*r, None) for r in timings(args.models_dir, args.device, args.repeats)]
    rows += analysis_timings(args.models_dir, args.device, args.repeats)
    rss = {}
    for variant in ("fast", "naive"):
        cmd = [sys.executable, __file__, "--rss-of", variant, "--device", args.device,
               "--models-dir", str(args.models_dir)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rss[variant] = [float(v) for v in out.split()]
    rows.append(("peak RSS MiB, all models + 1 study", rss["fast"][0], rss["naive"][0], GOAL_RSS_MIB))
    rows.append(("  of which above the imports (torch...)", rss["fast"][1], rss["naive"][1], None))
    batch = args.batch or (16 if resolve_device(args.device).type == "cuda" else 4)
    speed = throughput(args.models_dir, args.device, batch, args.repeats)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, median of "
          f"{args.repeats} after 1 warm-up, times in ms; 1-min load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes skew CPU timings)")  # fmt: skip
    print(f"{'':42} {'runner':>10} {'naive':>10} {'naive/runner':>13} {'goal':>8}")
    for name, value, other, goal in rows:
        side = f"{other:10.1f} {other / value:12.1f}x" if other is not None and value > 0 else " " * 24
        met = (
            f" {'<=' if value <= goal else '> '}{goal:6.0f} {'met' if value <= goal else 'MISSED'}"
            if goal
            else ""
        )
        print(f"{name:42} {value:10.1f} {side}{met}")
    for name, value, other, _ in speed:  # higher is better here
        print(f"{name:42} {value:10.2f} {other:10.2f} {value / other:12.1f}x (runner/naive)")


if __name__ == "__main__":
    main()
