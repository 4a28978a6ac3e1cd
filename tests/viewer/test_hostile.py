"""Hostile files: frame-header and deflate bombs, decoders over their limits, corrupt pixel data, header values
that cannot be displayed. Every one is rejected with its code or shown with a warning and a safe fallback."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ComputedRadiographyImageStorage, DeflatedExplicitVRLittleEndian, generate_uid

from viewer import dicom_io, windowing

from .conftest import PATIENT_ID, PATIENT_NAME
from .test_dicom_io import NIH_DX, SIIM_MONO2, _rejected

REPO = Path(__file__).resolve().parents[2]
RAMP = np.arange(4096, dtype=np.uint16).reshape(64, 64)
_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}  # JPEG SOFn and JPEG-LS SOF55


def frame_of(path: Path) -> bytes:
    return next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))


def with_sof_size(frame: bytes, rows: int, cols: int) -> bytes:
    """The JPEG / JPEG-LS frame with the height and width of its frame header replaced."""
    data, i = bytearray(frame), 2
    while data[i + 1] not in _SOF:
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    data[i + 5:i + 9] = struct.pack(">HH", rows, cols)
    return bytes(data)


def with_siz_size(frame: bytes, rows: int, cols: int) -> bytes:
    """The JPEG 2000 codestream with Ysiz / Xsiz of its SIZ replaced (no image offset in these files)."""
    assert frame[:4] == b"\xff\x4f\xff\x51" and frame[16:24] == bytes(8)
    return frame[:8] + struct.pack(">II", cols, rows) + frame[16:]


def with_rle_segments(frame: bytes, count: int) -> bytes:
    return struct.pack("<I", count) + frame[4:]


# --- frame-header bombs: a small file whose codestream promises a huge image -------------------------------


def _bombs(shared_data, testdata, rewrite) -> dict[str, tuple[Path, Path]]:
    """name: (the real file made acceptable as a chest radiograph, the same with its frame header patched)."""
    siim = shared_data / SIIM_MONO2
    jls, j2k, rle = (testdata(n) for n in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"))
    cr = {"Modality": "CR"}  # the pydicom-data files are MR: the modality check would refuse them first
    return {
        "JPEG baseline": (
            rewrite(siim, "jpeg.dcm"),
            rewrite(siim, "jpeg_bomb.dcm", PixelData=encapsulate([with_sof_size(frame_of(siim), 65535, 65535)])),
        ),
        "JPEG-LS": (
            rewrite(jls, "jls.dcm", **cr),
            rewrite(jls, "jls_bomb.dcm", **cr, PixelData=encapsulate([with_sof_size(frame_of(jls), 65535, 65535)])),
        ),
        "JPEG 2000": (
            rewrite(j2k, "j2k.dcm", **cr),
            rewrite(j2k, "j2k_bomb.dcm", **cr, PixelData=encapsulate([with_siz_size(frame_of(j2k), 65535, 65535)])),
        ),
        # HTJ2K shares SIZ with JPEG 2000: the same codestream under the HTJ2K transfer syntax is refused
        # before any decoder could tell the difference.
        "HTJ2K": (
            rewrite(j2k, "htj2k.dcm", **cr, TransferSyntaxUID="1.2.840.10008.1.2.4.201"),
            rewrite(j2k, "htj2k_bomb.dcm", **cr, TransferSyntaxUID="1.2.840.10008.1.2.4.201",
                    PixelData=encapsulate([with_siz_size(frame_of(j2k), 65535, 65535)])),
        ),
        # RLE has no size in its header; what decoders trust is its segment count (2 for 16-bit grey).
        "RLE": (
            rewrite(rle, "rle.dcm", **cr),
            rewrite(rle, "rle_bomb.dcm", **cr, PixelData=encapsulate([with_rle_segments(frame_of(rle), 1)])),
        ),
    }


def test_frame_header_bombs_are_refused_from_the_header(shared_data, testdata, rewrite):
    for name, (good, bomb) in _bombs(shared_data, testdata, rewrite).items():
        assert dicom_io.load(good).stored.size > 0, name  # the untouched frame decodes
        mentions = ("1 segment(s)", "need 2") if name == "RLE" else ("65535 x 65535", "frame header")
        # read_header decodes nothing: the rejection comes from the frame's header alone.
        _rejected(bomb, "frame_size_mismatch", *mentions, header_only=True)
        _rejected(bomb, "frame_size_mismatch", *mentions)


def test_an_offset_table_that_points_the_decoder_past_the_checked_fragment_is_refused(shared_data, rewrite):
    # Decoders start a frame where the offset table points: a harmless first fragment must not hide a bomb.
    siim = shared_data / SIIM_MONO2
    frame = frame_of(siim)
    bomb = with_sof_size(frame, 65535, 65535)
    hidden = rewrite(siim, "hidden_bomb.dcm", PixelData=encapsulate([frame, bomb], has_bot=True))
    _rejected(hidden, "decode_failed", "Basic Offset Table", header_only=True)
    extended = rewrite(siim, "extended_offsets.dcm", PixelData=encapsulate([frame + bomb]),
                       ExtendedOffsetTable=struct.pack("<Q", len(frame)), ExtendedOffsetTableLengths=struct.pack("<Q", len(bomb)))  # fmt: skip
    _rejected(extended, "decode_failed", "Extended Offset Table", header_only=True)
    one_entry = rewrite(siim, "bot_zero.dcm", PixelData=encapsulate([frame], has_bot=True))  # a table of [0]
    assert dicom_io.load(one_entry).stored.shape == (1024, 1024)


def test_frame_header_disagreeing_in_components_or_precision(shared_data, rewrite):
    siim = shared_data / SIIM_MONO2
    frame = bytearray(frame_of(siim))
    sof = frame.index(b"\xff\xc0")  # the SIIM frame has no table bytes that look like SOF0 before it
    twelve_bit = frame[:sof + 4] + b"\x0c" + frame[sof + 5:]
    _rejected(rewrite(siim, "p12.dcm", PixelData=encapsulate([bytes(twelve_bit)])), "frame_size_mismatch",
              "at 12 bits", "in 8 bits", header_only=True)
    small = rewrite(siim, "small.dcm", PixelData=encapsulate([with_sof_size(bytes(frame), 512, 1024)]))
    _rejected(small, "frame_size_mismatch", "512 x 1024", "1024 x 1024", header_only=True)


def test_a_frame_without_its_header_is_refused(shared_data, rewrite):
    siim = shared_data / SIIM_MONO2
    scan_only = frame_of(siim)[frame_of(siim).index(b"\xff\xda"):]  # SOI, tables and SOF cut away
    _rejected(rewrite(siim, "headless.dcm", PixelData=encapsulate([scan_only])), "decode_failed", "SOI",
              header_only=True)


def _deflate_bomb(path: Path, pixel_bytes: int) -> Path:
    """A 1024 x 1024 16-bit CR, Deflated Explicit VR Little Endian, whose PixelData inflates to `pixel_bytes`
    zeros. The zeros are one compressed megabyte repeated: after a full flush a compressor starts afresh, so
    each further megabyte compresses to the same bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, PATIENT_ID, "CR"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 1024, 1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    zip_ = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [zip_.compress(head.getvalue() + pixel_header) + zip_.flush(zlib.Z_FULL_FLUSH)]
    megabyte = zip_.compress(bytes(1 << 20)) + zip_.flush(zlib.Z_FULL_FLUSH)
    body += [megabyte] * (pixel_bytes >> 20) + [zip_.flush()]
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    path.write_bytes(out.getvalue() + b"".join(body))
    return path


def test_deflate_bomb_is_refused_before_inflating(tmp_path):
    honest = _deflate_bomb(tmp_path / "deflated.dcm", 2 << 20)  # exactly the 2 MB the header needs
    assert dicom_io.load(honest).stored.shape == (1024, 1024)
    bomb = _deflate_bomb(tmp_path / "deflate_bomb.dcm", 1 << 30)  # 1 GB of zeros in a 1 MB file
    assert bomb.stat().st_size < 2 << 20
    _rejected(bomb, "decode_limit", "inflates to more than 256 MB", header_only=True)


def _header_bomb(path: Path, items: int, shared_data) -> Path:
    """NIH DX (implicit VR little endian) with a sequence of `items` empty items before its pixel data: 16
    bytes of file per item, about 1 KB of memory and 14 us of pydicom's time when parsed."""
    data = (shared_data / NIH_DX).read_bytes()
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HHI", 0x0040, 0x0275, 0xFFFFFFFF) + item * items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    path.write_bytes(data[:at] + sequence + data[at:])
    return path


def test_header_bomb_is_stopped_by_the_header_limit(shared_data, tmp_path):
    assert dicom_io.load(_header_bomb(tmp_path / "few_items.dcm", 1000, shared_data)).stored.shape == (1024, 1024)
    bomb = _header_bomb(tmp_path / "header_bomb.dcm", 500_000, shared_data)  # 9 MB; 7 s and 460 MB in pydicom
    with pytest.raises(dicom_io.ImageRejected) as info:
        dicom_io.load(bomb)
    assert info.value.code == "decode_limit"
    assert info.value.message == "reading the header needed more than its limit of 1 s"
    with pytest.raises(dicom_io.ImageRejected) as info:  # the viewer's header panel parses in a worker too
        dicom_io.header_elements(bomb)
    assert info.value.code == "decode_limit"


def test_a_header_bomb_without_preamble_and_file_meta_is_stopped_too(shared_data, tmp_path):
    # A dataset without preamble is read with pydicom's force=True: under the same header limit, in a worker.
    part10 = _header_bomb(tmp_path / "header_bomb.dcm", 500_000, shared_data).read_bytes()
    (group_length,) = struct.unpack_from("<I", part10, 132 + 8)  # (0002,0000) UL: the file meta's length
    bomb = tmp_path / "header_bomb_without_meta.dcm"
    bomb.write_bytes(part10[132 + 12 + group_length :])  # the implicit VR dataset alone, group 0x0008 first
    assert bomb.read_bytes()[:2] == b"\x08\x00"
    with pytest.raises(dicom_io.ImageRejected) as info:
        dicom_io.load(bomb)
    assert (info.value.code, info.value.message) == ("decode_limit", "reading the header needed more than its limit of 1 s")


_PEAK_RSS = """
import resource, sys
from viewer import dicom_io, sandbox
for path in sys.argv[1:]:
    try:
        dicom_io.load(path)
        print("loaded")
    except dicom_io.ImageRejected as exc:
        print(exc.code)
sandbox._close()  # kills and reaps the decode workers, so that RUSAGE_CHILDREN holds their peaks
with open("/proc/self/status") as f:  # VmHWM: this program's own peak since exec
    own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print("peak_kb", own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_bombs_are_refused_in_a_process_that_stays_small(shared_data, testdata, rewrite, tmp_path):
    bombs = [bomb for _, bomb in _bombs(shared_data, testdata, rewrite).values()]
    bombs += [_deflate_bomb(tmp_path / "deflate_bomb.dcm", 1 << 30), _header_bomb(tmp_path / "hb.dcm", 500_000, shared_data)]
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *map(str, bombs)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    *codes, peaks = done.stdout.split("\n")[:-1]
    assert codes == ["frame_size_mismatch"] * 5 + ["decode_limit"] * 2
    # The process's own peak (VmHWM, since its exec: a forked child's ru_maxrss would count pytest's memory)
    # and its decode workers' peak. The 65535 x 65535 JPEG alone cost 16.5 GB before the checks.
    own_kb, workers_kb = map(int, peaks.split()[1:])
    assert own_kb * 1024 < 500e6 and workers_kb * 1024 < 500e6, (own_kb, workers_kb)


# --- decoding under limits ----------------------------------------------------------------------------------


def test_the_memory_limit_stops_a_decode_and_the_next_one_works(testdata):
    path = testdata("RG1_UNCR.dcm")  # 7 MB: it cannot even be read within 4 MB
    tight = dicom_io.DecodeLimits(memory_base_bytes=4 << 20, memory_per_pixel=0, memory_per_file_byte=0)
    with pytest.raises(dicom_io.ImageRejected) as info:
        dicom_io.load(path, tight)
    assert info.value.code == "decode_limit" and "decoding the 1955 x 1841 pixels needed more than its limit of 4 MB" in info.value.message
    assert dicom_io.load(path).stored.shape == (1955, 1841)  # the default limits leave room for it


def test_the_time_limit_kills_a_slow_decode_and_the_next_one_works(testdata):
    path = testdata("RG1_J2KR.dcm")  # JPEG 2000 of 3.6 Mpixel: about 0.4 s of decoding on this machine
    hurried = dicom_io.DecodeLimits(seconds_base=0.02, seconds_per_mpixel=0.0)
    with pytest.raises(dicom_io.ImageRejected) as info:
        dicom_io.load(path, hurried)
    assert info.value.code == "decode_limit" and info.value.message.endswith("its limit of 0.02 s")
    assert dicom_io.load(path).stored.shape == (1955, 1841)  # a fresh worker replaced the killed one


def test_concurrent_loads_from_threads_give_the_sequential_results(shared_data, testdata):
    paths = [shared_data / SIIM_MONO2, shared_data / NIH_DX, testdata("RG1_J2KR.dcm"),
             shared_data / "nih/images/00000075_000.png"] * 3
    expected = {p: dicom_io.pixel_sha256(dicom_io.load(p)) for p in set(paths)}
    with ThreadPoolExecutor(8) as pool:  # Streamlit calls load() from several script threads at once
        got = list(pool.map(lambda p: dicom_io.pixel_sha256(dicom_io.load(p)), paths))
    assert got == [expected[p] for p in paths]


# --- corrupt pixel data -------------------------------------------------------------------------------------


def test_corrupt_jpeg_data_is_a_warning(shared_data, rewrite):
    siim = shared_data / SIIM_MONO2
    frame = bytearray(frame_of(siim))
    scan = frame.index(b"\xff\xda")
    frame[scan + 2000:scan + 2050] = bytes(50)  # zeros inside the entropy-coded data
    img = dicom_io.load(rewrite(siim, "corrupt.dcm", PixelData=encapsulate([bytes(frame)])))
    assert img.header.warnings == ("the decoder reported: Corrupt JPEG data: premature end of data segment",)
    assert dicom_io.load(rewrite(siim, "intact.dcm")).header.warnings == ()


# --- header values that cannot be displayed -----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("attrs, warning", [
    ({"RescaleSlope": "NaN"}, "RescaleSlope / RescaleIntercept"),
    ({"RescaleSlope": "inf"}, "RescaleSlope / RescaleIntercept"),
    ({"RescaleSlope": "0"}, "RescaleSlope / RescaleIntercept"),
    ({"RescaleIntercept": "-1e300"}, "RescaleSlope / RescaleIntercept"),
    ({"WindowCenter": "NaN", "WindowWidth": "400"}, "WindowCenter/WindowWidth are not finite"),
    ({"WindowCenter": "2000", "WindowWidth": "inf"}, "WindowCenter/WindowWidth are not finite"),
    ({"WindowCenter": "1e9", "WindowWidth": "400"}, "do not fit the values this image can hold (0 to 65535)"),
    ({"WindowCenter": "2000", "WindowWidth": "1e7"}, "do not fit the values this image can hold"),
])
def test_unusable_display_values_fall_back_with_a_warning(make_dicom, attrs, warning):
    clean = dicom_io.load(make_dicom(RAMP, name="clean.dcm"))
    img = dicom_io.load(make_dicom(RAMP, name="bad.dcm", **attrs))
    assert len(img.header.warnings) == 1 and warning in img.header.warnings[0]
    assert (img.rescale_slope, img.rescale_intercept, img.header.window_width) == (1.0, 0.0, None)
    # Exactly the picture of the same pixels without the bad value: the full range, no rescale.
    assert np.array_equal(windowing.render(img), windowing.render(clean))
    assert windowing.presets(img) == windowing.presets(clean)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("keyword, value", [
    ("PixelSpacing", ["inf", "inf"]), ("PixelSpacing", ["1e-300", "1e-300"]), ("PixelSpacing", ["0.1", "NaN"]),
    ("ImagerPixelSpacing", ["20", "20"]), ("PixelSpacing", ["-0.2", "0.2"]),
])
def test_implausible_spacing_is_ignored_with_a_warning(make_dicom, keyword, value):
    h = dicom_io.read_header(make_dicom(RAMP, **{keyword: value}))
    assert (h.pixel_spacing_mm, h.pixel_spacing_source) == (None, None)
    assert h.warnings == (f"{keyword} is not two numbers from 0.01 to 10.0 mm and was ignored: "
                          "lengths are measured in pixels",)


def test_plausible_spacing_for_values_read_back_from_the_database():
    assert dicom_io.plausible_spacing(0.143, 0.143) and dicom_io.plausible_spacing(0.01, 10)
    for bad in ((float("inf"),) * 2, (1e-300,) * 2, (0.1, float("nan")), (0.0, 0.0), (None, None), (0.1, 10.5)):
        assert not dicom_io.plausible_spacing(*bad), bad


def _lut_item(entries: int, bits: int, data: np.ndarray) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, 0, bits])  # LUTDescriptor
    item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())  # LUTData
    return item


@pytest.mark.parametrize("entries, bits, data_entries, reason", [
    (4096, 0, 4096, "0 bits per entry; 1 to 16 are possible"),
    (4096, 17, 4096, "17 bits per entry; 1 to 16 are possible"),
    (4096, 12, 100, "LUTData holds 100 entries, LUTDescriptor says 4096"),
])
@pytest.mark.parametrize("keyword", ["VOILUTSequence", "ModalityLUTSequence"])
def test_malformed_luts_are_ignored_with_a_warning(make_dicom, keyword, entries, bits, data_entries, reason):
    item = _lut_item(entries, bits, np.arange(data_entries) % 4096)
    img = dicom_io.load(make_dicom(RAMP, name="lut.dcm", **{keyword: [item]}))
    assert img.header.warnings == (f"{keyword} is malformed ({reason}) and was ignored: "
                                   f"{'window' if keyword == 'VOILUTSequence' else 'rescale'} used instead",)
    assert img.voi_lut is None and img.modality_lut is None
    assert np.array_equal(windowing.render(img), windowing.render(dicom_io.load(make_dicom(RAMP, name="clean.dcm"))))


def test_rendering_never_raises_on_hand_built_images(make_dicom):
    from dataclasses import replace

    img = dicom_io.load(make_dicom(RAMP))
    nan = float("nan")
    bad = [
        replace(img, rescale_slope=nan), replace(img, rescale_slope=0.0, rescale_intercept=float("inf")),
        replace(img, header=replace(img.header, window_center=nan, window_width=400.0)),
        replace(img, header=replace(img.header, window_center=100.0, window_width=-1.0)),
        replace(img, voi_lut=dicom_io.Lut(first_mapped=0, table=np.arange(4096.0), bits=0)),
    ]
    full = windowing.render(img)
    for b in bad[:-1]:
        assert np.array_equal(windowing.render(b), full)
        assert windowing.default_window(b) == windowing.default_window(img)
        assert all(np.isfinite([w.center, w.width]).all() for w in windowing.presets(b).values())
    assert windowing.render(bad[-1]).dtype == np.uint8  # a 0-bit VOI LUT: no division by zero
