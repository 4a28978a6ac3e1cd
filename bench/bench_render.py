"""Open-to-first-pixel (load + render at the default window) and render alone, ours vs a naive reference.

Naive reference, the usual first attempt: pydicom.dcmread(path).pixel_array (PIL for PNG) -> astype(float64)
-> PS3.3 linear window formula on the whole image (-> MONOCHROME1 inversion) -> PIL Image -> np.asarray.
Ours: viewer.dicom_io.load + viewer.windowing.render (one table lookup over the stored values).
Median of N runs after one warm-up. Goal: open-to-first-pixel < 300 ms for RG1_UNCI.dcm.

    python bench/bench_render.py
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viewer import dicom_io, windowing  # noqa: E402

SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
GOAL_MS = 300.0


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up: imports, decoder plugins, file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _naive_pixels(path: Path) -> tuple[np.ndarray, float | None, float | None, bool]:
    if path.suffix == ".png":
        return np.asarray(Image.open(path)), 128.0, 256.0, False  # identity window
    ds = pydicom.dcmread(path)
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    return ds.pixel_array, c and float(c), w and float(w), ds.PhotometricInterpretation == "MONOCHROME1"


def _naive_render(pixels: np.ndarray, c: float | None, w: float | None, mono1: bool) -> np.ndarray:
    x = pixels.astype(np.float64)
    if c is None or w is None:
        lo, hi = x.min(), x.max()
        c, w = (lo + hi + 1) / 2, hi - lo + 1
    y = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5), 0, 1) * 255
    if mono1:
        y = 255 - y
    return np.asarray(Image.fromarray(np.floor(y + 0.5).astype(np.uint8)))


def main() -> None:
    from pydicom.data import get_testdata_file

    cases = [
        ("RG1_UNCI.dcm (CR 15-bit, MONO1)", get_testdata_file("RG1_UNCI.dcm", download=False), 15),
        ("SIIM CR JPEG baseline 8-bit", SHARED / "data/dicom/siim_cr_chest_pa_1024_jpeg_mono2.dcm", 30),
        ("NIH PNG 512x512 8-bit", SHARED / "data/nih/images/00000075_000.png", 30),
    ]
    print(f"{os.cpu_count()} CPU cores; median ms of N runs after 1 warm-up")
    header = f"{'file':<34}{'N':>3}  {'open+render ms':>26}  {'render only ms':>26}  {'max |diff|':>10}"
    print(header)
    print(f"{'':<34}{'':>3}  {'ours':>8}{'naive':>9}{'ratio':>9}  {'ours':>8}{'naive':>9}{'ratio':>9}")
    goal_ms = None
    for label, path, runs in cases:
        if path is None or not Path(path).exists():
            print(f"{label:<34}  skipped: {path or 'pydicom-data not installed'} not found")
            continue
        path = Path(path)
        img = dicom_io.load(path)
        pixels = _naive_pixels(path)
        ours_open = _median_ms(lambda: windowing.render(dicom_io.load(path)), runs)  # noqa: B023
        naive_open = _median_ms(lambda: _naive_render(*_naive_pixels(path)), runs)  # noqa: B023
        ours_render = _median_ms(lambda: windowing.render(img), runs)  # noqa: B023
        naive_render = _median_ms(lambda: _naive_render(*pixels), runs)  # noqa: B023
        diff = np.abs(windowing.render(img).astype(int) - _naive_render(*pixels)).max()
        print(f"{label:<34}{runs:>3}  {ours_open:>8.1f}{naive_open:>9.1f}{naive_open / ours_open:>8.1f}x"
              f"  {ours_render:>8.1f}{naive_render:>9.1f}{naive_render / ours_render:>8.1f}x  {diff:>10}")
        if path.name == "RG1_UNCI.dcm":
            goal_ms = ours_open
    if goal_ms is None:
        print("goal not measured: RG1_UNCI.dcm unavailable (pip install pydicom-data)")
    else:
        verdict = "met" if goal_ms < GOAL_MS else "NOT met"
        print(f"goal open-to-first-pixel < {GOAL_MS:.0f} ms for RG1_UNCI.dcm: {verdict} ({goal_ms:.1f} ms)")


if __name__ == "__main__":
    main()
