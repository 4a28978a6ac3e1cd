"""Hostile files against normal ones: what a rejection costs, and what the decode worker costs a normal file.

Each case runs in a fresh process (`--case`): wall time of dicom_io.load() after the decode worker is warm
(a tiny file loaded first), the peak RSS of that process and of its decode workers (ru_maxrss of itself and of
its reaped children), and the outcome. The ratios compare each case with the normal SIIM JPEG in the same run.
Goal: every hostile file refused in < 2 s with < 500 MB peak.

Then the overhead of the worker on normal files: load() (header checks, then decoding, each a call to the
worker) against the same header checks and decoding in this process (what load() did before the worker), over
the sample set (../shared/data: 3 DICOMs + the NIH PNGs), and the start of a worker.

    python bench/bench_hostile.py
"""
from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from viewer import dicom_io, sandbox  # noqa: E402

SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
SIIM = SHARED / "data/dicom/siim_cr_chest_pa_1024_jpeg_mono2.dcm"
NIH_DX = SHARED / "data/dicom/nih_dx_chest_1024_nofinding_nccid.dcm"
PNG = SHARED / "data/nih/images/00000075_000.png"


def _case(path: str, unchecked_header_of: str | None) -> None:
    """In the child: warm the worker, then time one load (or, with a header from another file, one decode
    that skips the header checks: the worker's limits alone)."""
    dicom_io.load(PNG)
    t0 = time.perf_counter()
    try:
        if unchecked_header_of:
            header = dicom_io.read_header(unchecked_header_of)
            limits = dicom_io.DECODE_LIMITS
            sandbox.run(dicom_io._decode_dicom, path, header, memory_bytes=limits.memory_bytes(
                header, os.path.getsize(path)), seconds=limits.seconds(header))
            outcome = "decoded"
        else:
            img = dicom_io.load(path)
            outcome = f"loaded, {len(img.header.warnings)} warning(s)"
    except (dicom_io.ImageRejected, sandbox.LimitExceeded, sandbox.WorkerFailed) as exc:
        outcome = getattr(exc, "code", f"{type(exc).__name__}({exc})")
    seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sandbox._close()  # reap the workers, so that their peak is counted below
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"outcome": outcome, "seconds": seconds, "own_mb": own / 1024, "workers_mb": workers / 1024}))


def _run_case(path: Path, unchecked_header_of: Path | None = None) -> dict:
    args = [sys.executable, __file__, "--case", str(path)] + ([str(unchecked_header_of)] if unchecked_header_of else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def _frame(path: Path) -> bytearray:
    return bytearray(next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1)))


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        setattr(ds.file_meta if keyword == "TransferSyntaxUID" else ds, keyword, value)
    ds.save_as(dst)
    return dst


def _hostile_files(tmp: Path) -> list[tuple[str, Path, Path | None]]:
    from pydicom.data import get_testdata_file

    sof = _frame(SIIM)
    at = sof.index(b"\xff\xc0")
    sof[at + 5:at + 9] = struct.pack(">HH", 65535, 65535)
    jpeg_bomb = _rewrite(SIIM, tmp / "jpeg_bomb.dcm", PixelData=encapsulate([bytes(sof)]))
    j2k = Path(get_testdata_file("RG1_J2KR.dcm"))
    siz = _frame(j2k)
    siz[8:16] = struct.pack(">II", 65535, 65535)
    j2k_bomb = _rewrite(j2k, tmp / "j2k_bomb.dcm", PixelData=encapsulate([bytes(siz)]))
    corrupt = _frame(SIIM)
    scan = corrupt.index(b"\xff\xda")
    corrupt[scan + 2000:scan + 2050] = bytes(50)
    return [
        ("JPEG SOF 65535 x 65535 (127 KB)", jpeg_bomb, None),
        ("the same, header checks skipped", jpeg_bomb, SIIM),
        ("J2K SIZ 65535 x 65535", j2k_bomb, None),
        ("deflate bomb, 1 GB inflated", _deflate_bomb(tmp / "deflate_bomb.dcm"), None),
        ("header bomb, 500k sequence items", _header_bomb(tmp / "header_bomb.dcm"), None),
        ("corrupt JPEG data", _rewrite(SIIM, tmp / "corrupt.dcm", PixelData=encapsulate([bytes(corrupt)])), None),
        ("RescaleSlope NaN, PixelSpacing inf", _rewrite(NIH_DX, tmp / "nan.dcm", RescaleSlope="NaN",
                                                       PixelSpacing=["inf", "inf"]), None),
        ("truncated JPEG DICOM", _cut(SIIM, tmp / "cut.dcm"), None),
    ]


def _header_bomb(path: Path) -> Path:
    """NIH DX (implicit VR) with a sequence of 500,000 empty items before its pixel data: 9 MB."""
    data = NIH_DX.read_bytes()
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HHI", 0x0040, 0x0275, 0xFFFFFFFF) + item * 500_000 + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    path.write_bytes(data[:at] + sequence + data[at:])
    return path


def _cut(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _deflate_bomb(path: Path) -> Path:
    """NIH DX's header as Deflated Explicit VR Little Endian, with 1 GB of zeros as its pixel data: 1 MB of
    zeros compressed once and repeated (after a full flush, a compressor starts afresh)."""
    ds = pydicom.dcmread(NIH_DX)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    zip_ = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 1 << 30)
    body = [zip_.compress(head.getvalue() + pixel_header) + zip_.flush(zlib.Z_FULL_FLUSH)]
    body += [zip_.compress(bytes(1 << 20)) + zip_.flush(zlib.Z_FULL_FLUSH)] * 1024 + [zip_.flush()]
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta)
    path.write_bytes(out.getvalue() + b"".join(body))
    return path


def _overhead(files: list[Path]) -> tuple[float, float, float]:
    """Seconds for all files: load() through the warm worker; header checks and decoding in this process;
    and the start of one worker."""
    t0 = time.perf_counter()
    sandbox.run(len, (), memory_bytes=1 << 30, seconds=60)  # starts a worker
    start = time.perf_counter() - t0
    for f in files:  # warm the file cache and both workers
        dicom_io.load(f)
    t0 = time.perf_counter()
    for f in files:
        dicom_io.load(f)
    worker = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in files:
        header = dicom_io.read_header(f)
        (dicom_io._decode_dicom if header.source_format == "dicom" else dicom_io._decode_raster)(str(f), header)
    inline = time.perf_counter() - t0
    return worker, inline, start


def main() -> None:
    warnings.simplefilter("ignore")
    from pydicom.data import get_testdata_file

    print(f"{os.cpu_count()} CPU cores; each case in a fresh process with a warm decode worker")
    print(f"{'case':<38}{'outcome':<28}{'ms':>8}{'x normal':>9}{'own MB':>8}{'worker MB':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        normal = _run_case(SIIM)
        cases = [("normal: SIIM JPEG 1024x1024", SIIM, None), ("normal: NIH DX native 1024x1024", NIH_DX, None),
                 ("normal: RG1_J2KR 1955x1841 J2K", Path(get_testdata_file("RG1_J2KR.dcm")), None),
                 *_hostile_files(Path(tmp))]
        worst = (0.0, 0.0)
        for label, path, unchecked in cases:
            r = normal if path == SIIM and unchecked is None and label.startswith("normal") else _run_case(path, unchecked)
            peak = max(r["own_mb"], r["workers_mb"])
            if not label.startswith("normal"):
                worst = (max(worst[0], r["seconds"]), max(worst[1], peak))
            print(f"{label:<38}{r['outcome']:<28}{r['seconds'] * 1000:>8.1f}{r['seconds'] / normal['seconds']:>8.1f}x"
                  f"{r['own_mb']:>8.0f}{r['workers_mb']:>10.0f}")
        verdict = "met" if worst[0] < 2 and worst[1] < 500 else "NOT met"
        print(f"goal < 2 s and < 500 MB per hostile file: {verdict} (worst {worst[0]:.2f} s, {worst[1]:.0f} MB)")

    files = sorted(p for p in (SHARED / "data/dicom").iterdir()) + sorted((SHARED / "data/nih/images").glob("*.png"))
    worker, inline, start = _overhead(files)
    n = len(files)
    print(f"\nsample set, {n} files: load() with the decode worker {worker:.2f} s, in-process {inline:.2f} s; "
          f"overhead {(worker - inline) / n * 1000:.2f} ms per file ({worker / inline:.2f}x); "
          f"a worker starts in {start * 1000:.0f} ms, once per process and worker")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        _case(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        main()
