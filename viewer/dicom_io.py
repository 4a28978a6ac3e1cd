"""Reading radiographs: DICOM (the only `pydicom.dcmread` caller in the repository), PNG and JPEG.

What is accepted, and the `ImageRejected.code` of everything else:

- Format. Empty file: "empty_file". PNG and JPEG are recognised by their signature. Anything else must be DICOM
  with the 'DICM' marker after the 128-byte preamble (pydicom with force=False), or a bare dataset without preamble
  and file meta as older modalities and PACS exports write (`_bare_dataset`: its first elements, group 0x0008
  first, parse in explicit or implicit VR little endian; then pydicom with force=True, and Rows, Columns,
  BitsAllocated and PixelData must be present). Such a file names no transfer syntax: it is the encoding pydicom
  infers from the first element (a valid VR there: explicit, else implicit VR little endian), the pixel data
  native, and a warning says so. Otherwise "not_an_image".
- DICOM, checked on the header before any pixel is decoded, in this order:
  - "truncated": an element (pixel data included) runs past the end of the file, or the PixelData tag is in the
    file but pydicom could not read the element to its end (a cut inside encapsulated fragments). Positions are
    not checked for deflated files (they are offsets into the inflated stream): a cut there is "decode_failed".
  - "no_pixel_data": no PixelData element (also what a file cut exactly between two elements looks like).
  - "not_radiograph": Modality must be CR, DX, DR or RG. Secondary Capture SOP classes (1.2.840.10008.5.1.4.1.1.7*,
    how digitised films and converted images arrive) may also say OT or nothing; a Secondary Capture that
    names another modality (CT, MR, US, ...) is a capture of that modality, not a radiograph.
  - "multiframe": NumberOfFrames > 1.
  - "absurd_dimensions": Rows or Columns missing, < 64 or > 12000, or more than 80 Mpixel.
  - "unsupported_bits": BitsStored outside 1..16, or BitsAllocated other than 1, 8 or 16.
  - "unsupported_photometric": MONOCHROME1 and MONOCHROME2 are accepted; RGB, YBR_FULL and YBR_FULL_422 only for
    Secondary Capture (converted to grey, with a warning); anything else is rejected.
  - "unsupported_transfer_syntax": see `SUPPORTED_TRANSFER_SYNTAXES`; also rejected when pydicom has no
    installed decoder for it (pylibjpeg / gdcm missing).
  - "truncated": native (uncompressed) PixelData shorter than Rows x Columns x SamplesPerPixel x BitsAllocated.
    "unsupported_transfer_syntax": native PixelData of undefined length (encapsulated fragments: compressed
    pixels in a bare dataset, whose compression nothing names).
  - Compressed PixelData: the frame's own header (viewer.codestream: JPEG SOF, JPEG-LS SOF55, JPEG 2000 / HTJ2K
    SIZ, the RLE segment table), read from the first FRAME_HEADER_BYTES of the frame, is what decoders size
    their output from. "frame_size_mismatch": its rows, columns or components differ from Rows / Columns /
    SamplesPerPixel, its precision exceeds BitsAllocated, or RLE has other than SamplesPerPixel x
    BitsAllocated / 8 segments. "decode_failed": no such header, or a malformed one.
  - "decode_limit": a deflated dataset that inflates past MAX_INFLATED_BYTES (checked before pydicom inflates
    it, in bounded steps).
  Then decoding. load() runs these checks, then the decoding, in a worker process (viewer.sandbox) limited by
  DecodeLimits: over its memory or time, "decode_limit"; any other decoder failure, "decode_failed".
- PNG / JPEG: dimensions from the IHDR / SOF (PIL, lazily) with the same size caps, then cv2.imdecode (16-bit
  PNG kept) in the same workers. Colour is converted to grey, with a warning only when the channels actually
  differ; alpha is dropped. Undecodable data: "decode_failed".

Non-fatal findings go into `ImageHeader.warnings`: BodyPartExamined other than CHEST/THORAX/LUNG, colour
converted to grey, spacing taken from ImagerPixelSpacing, what a decoder reported ("Corrupt JPEG data: ...",
from gdcm's libjpeg, the decoder pydicom tries first), and header values that were not used, with what
replaced them: RescaleSlope / RescaleIntercept that are not finite or out of range (1 and 0 instead),
PixelSpacing / ImagerPixelSpacing outside SPACING_MIN_MM..SPACING_MAX_MM (lengths in pixels instead),
WindowCenter / WindowWidth not finite, invalid for the VOI LUT function or not overlapping the values the
image can hold (full range instead), and a malformed Modality LUT or VOI LUT Sequence (rescale / window
instead).

Messages are PHI-free: they name attributes, UIDs of transfer syntaxes and SOP classes, sizes and coded
values (CS), never names, ids, dates or free text, and never the text of a parser exception (pydicom's
messages can quote header values); the exception is chained for developers instead.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import logging
import math
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.values import converters as _vr_converters

from viewer import codestream, sandbox

# pydicom quotes header values in its log records and warnings ("Invalid value for VR UI: '<the UID>'"); logs
# and the server's stderr never carry header values, so both stop here (decode workers import this module too).
logging.getLogger("pydicom").addHandler(logging.NullHandler())
logging.getLogger("pydicom").propagate = False
warnings.filterwarnings("ignore", module="pydicom")

REJECTION_CODES = frozenset({
    "not_an_image", "truncated", "no_pixel_data", "unsupported_photometric", "unsupported_transfer_syntax",
    "absurd_dimensions", "unsupported_bits", "multiframe", "not_radiograph", "decode_failed", "empty_file",
    "frame_size_mismatch", "decode_limit",
})


class ImageRejected(Exception):
    """The one typed error of this module: a stable `code` (see REJECTION_CODES) and a PHI-free message."""

    def __init__(self, code: str, message: str):
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # rebuilt from both arguments when it comes back from a decode worker
        return type(self), (self.code, self.message)


DicomRejected = ImageRejected  # the name DESIGN.md uses

MIN_SIDE, MAX_SIDE, MAX_PIXELS = 64, 12000, 80_000_000
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG"})
COLOUR_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422"})
SUPPORTED_TRANSFER_SYNTAXES = tuple(UID(u) for u in (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG baseline / extended
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K, if decodable
    "1.2.840.10008.1.2.5",  # RLE lossless
))
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PNG_MAGIC, _JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
# The VRs by which pydicom tells explicit from implicit VR in a file without a transfer syntax, and those encoded
# with 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_VRS = frozenset(str(vr) for vr in _vr_converters if len(vr) == 2)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_BARE_HEAD_BYTES, _BARE_ELEMENTS = 1024, 4  # of a bare dataset's start: read, and elements parsed
# Binary VRs never shown in the header panel.
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
# Coded strings (CS) are safe to quote in messages; anything else in such a field is not quoted.
_CS_RE = re.compile(r"[A-Z0-9 _]{1,16}")
# Elements larger than this are not read by read_header (pixel data, big private blobs).
_DEFER_BYTES = 4096
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_RLE = "1.2.840.10008.1.2.5"
FRAME_HEADER_BYTES = 1 << 20  # of a frame read for its header: room for large APPn segments before a SOF
MAX_INFLATED_BYTES = 256 << 20  # an 80 Mpixel 16-bit image and its header fit
SPACING_MIN_MM, SPACING_MAX_MM = 0.01, 10.0  # a pixel of a radiograph, detector or digitised film
RESCALE_SLOPE_MIN, RESCALE_MAX = 1e-6, 1e6  # |slope| and |intercept|; beyond, values lose all meaning
WINDOW_MAX_WIDTH_FACTOR = 16.0  # a window this many times wider than all possible values is near flat grey


@dataclass(frozen=True)
class DecodeLimits:
    """What reading one file may cost in its worker (viewer.sandbox): address space beyond the worker's own,
    and CPU time (a wall-clock backstop of several times that catches a stalled worker). First the header, whose size is not known yet (a header of millions of elements takes
    pydicom minutes and gigabytes); then the pixels, with limits that grow with the image, so that the largest
    accepted image (80 Mpixel) decodes while a small hostile one is stopped early."""

    header_memory_base_bytes: int = MAX_INFLATED_BYTES + (64 << 20)  # a deflated dataset is inflated whole
    header_seconds: float = 1.0  # real headers parse in milliseconds
    memory_base_bytes: int = 160 << 20
    memory_per_pixel: int = 32  # JPEG 2000 via gdcm / openjpeg: 14 to 25 bytes per grey 16-bit pixel
    memory_per_file_byte: int = 3  # the file read whole, and its frame copied out of it
    seconds_base: float = 1.5
    seconds_per_mpixel: float = 0.25  # JPEG 2000 lossless decodes at ~0.11 s per Mpixel on this 2-core CPU

    def header_memory_bytes(self, file_size: int) -> int:
        return self.header_memory_base_bytes + self.memory_per_file_byte * file_size

    def memory_bytes(self, header: ImageHeader, file_size: int) -> int:
        return (self.memory_base_bytes + self.memory_per_pixel * header.rows * header.columns
                + self.memory_per_file_byte * file_size)

    def seconds(self, header: ImageHeader) -> float:
        return self.seconds_base + self.seconds_per_mpixel * header.rows * header.columns / 1e6


DECODE_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class ImageHeader:
    source_format: str  # "dicom" | "png" | "jpeg"
    rows: int
    columns: int
    bits_stored: int
    photometric_interpretation: str
    transfer_syntax_uid: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None  # stored in the DB only; never logged
    issuer_of_patient_id: str | None = None  # idem; with patient_id it links a patient's studies
    patient_name: str | None = None  # idem
    patient_age_years: int | None = None
    patient_sex: str | None = None  # "M" | "F" | "O" | None
    study_date: datetime.date | None = None
    study_description: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, column)
    pixel_spacing_source: str | None = None  # "PixelSpacing" | "ImagerPixelSpacing" | None
    window_center: float | None = None
    window_width: float | None = None
    rescale_slope: float = 1.0  # as used: 1 and 0 when the header's are missing or unusable
    rescale_intercept: float = 0.0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Lut:
    """A DICOM lookup table (PS3.3 C.11.1 Modality LUT, C.11.2 VOI LUT): input values below `first_mapped`
    take the first entry, values past the end the last one. Output range is 0 .. 2**bits - 1."""

    first_mapped: int
    table: np.ndarray  # float64
    bits: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        idx = np.clip(np.floor(x).astype(np.int64) - self.first_mapped, 0, len(self.table) - 1)
        return self.table[idx]


@dataclass(frozen=True, eq=False)
class DecodedImage:
    header: ImageHeader
    stored: np.ndarray  # 2D, read-only, uint8/int8/uint16/int16 as decoded; colour already converted to grey
    voi_lut: Lut | None = None  # first item of the VOI LUT Sequence
    modality_lut: Lut | None = None  # Modality LUT Sequence; when present, rescale is not used (PS3.3 C.11.1)
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    voi_lut_function: str = "LINEAR"  # "LINEAR" | "LINEAR_EXACT" | "SIGMOID" (VOILUTFunction)

    @property
    def monochrome1(self) -> bool:
        return self.header.photometric_interpretation == "MONOCHROME1"


# ---------------------------------------------------------------------------------------------------------
# Public entry points


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Parse and validate the header without decoding any pixel; raises ImageRejected."""
    kind = _sniff(path)
    if kind == "dicom":
        return _dicom_header(_read_dicom(path, defer_size=_DEFER_BYTES), path)
    return _raster_header(path, kind)


def load(path: str | os.PathLike, limits: DecodeLimits = DECODE_LIMITS) -> DecodedImage:
    """read_header's checks, then decoding, each in a worker process under `limits`; every parser/decoder
    failure is an ImageRejected."""
    path, size = os.fspath(path), os.path.getsize(path)
    header = _in_worker(read_header, path, memory=limits.header_memory_bytes(size), seconds=limits.header_seconds,
                        what="reading the header")
    decode = _decode_dicom if header.source_format == "dicom" else _decode_raster
    img = _in_worker(decode, path, header, memory=limits.memory_bytes(header, size), seconds=limits.seconds(header),
                     what=f"decoding the {header.rows} x {header.columns} pixels")
    return replace(img, stored=_readonly(img.stored))


def _in_worker(fn, *args, memory: int, seconds: float, what: str):
    try:
        return sandbox.run(fn, *args, memory_bytes=memory, seconds=seconds)
    except sandbox.LimitExceeded as exc:
        limit = f"{memory / 2**20:.0f} MB of memory" if exc.kind == "memory" else f"{seconds:.3g} s"
        raise ImageRejected("decode_limit", f"{what} needed more than its limit of {limit}") from exc
    except sandbox.WorkerFailed as exc:
        raise ImageRejected("decode_failed", f"{what} failed: {exc}") from exc
    except ImageRejected:
        raise
    except Exception as exc:  # whatever else a decoder raised (cv2.error, ...): one typed rejection
        raise ImageRejected("decode_failed", f"{what} failed ({type(exc).__name__})") from exc


def plausible_spacing(row_mm, col_mm) -> bool:
    """Whether a (row, column) pixel spacing in mm can be a radiograph's: both finite and within
    SPACING_MIN_MM..SPACING_MAX_MM. For values imported before the header checks existed, too."""
    try:
        return all(SPACING_MIN_MM <= float(v) <= SPACING_MAX_MM for v in (row_mm, col_mm))
    except (TypeError, ValueError):
        return False


def usable_rescale(slope: float, intercept: float) -> bool:
    """Whether RescaleSlope / RescaleIntercept give meaningful values: finite, slope not 0, magnitudes within
    RESCALE_SLOPE_MIN..RESCALE_MAX."""
    return RESCALE_SLOPE_MIN <= abs(slope) <= RESCALE_MAX and abs(intercept) <= RESCALE_MAX


def header_elements(path: str | os.PathLike, limits: DecodeLimits = DECODE_LIMITS) -> list[tuple[str, str, str, str]]:
    """(tag, keyword, VR, value) of the file meta and top-level dataset for the header panel; [] for PNG/JPEG.

    Bulk binary elements (pixel data included) are left out, sequences read "<sequence of N items>", values are
    cut to 200 characters. Parsed in a decode worker under the header's limits, like load()."""
    path = os.fspath(path)
    return _in_worker(_header_elements, path, memory=limits.header_memory_bytes(os.path.getsize(path)),
                      seconds=limits.header_seconds, what="reading the header")  # fmt: skip


def _header_elements(path: str) -> list[tuple[str, str, str, str]]:
    if _sniff(path) != "dicom":
        return []
    ds = _read_dicom(path, stop_before_pixels=True)
    rows = []
    # A bare dataset's file meta is _read_dicom's, not the file's.
    for elem in [*(ds.file_meta if ds.preamble is not None else ()), *ds]:
        if elem.VR in _BULK_VRS:
            continue
        if elem.VR == "SQ":
            text = f"<sequence of {len(elem.value)} items>"
        elif isinstance(elem.value, MultiValue):
            text = "\\".join(str(v) for v in elem.value)
        else:
            text = "" if elem.value is None else str(elem.value)
        if len(text) > 200:
            text = text[:199] + "…"
        rows.append((f"({elem.tag.group:04X},{elem.tag.element:04X})", elem.keyword, str(elem.VR), text))
    return rows


def pixel_sha256(img: DecodedImage) -> str:
    """sha256 over shape, dtype, photometric interpretation and stored bytes: duplicate detection and the
    inference cache key. The photometric interpretation is in because identical bytes tagged MONOCHROME1
    are the inverse picture and must not share MONOCHROME2's cached predictions."""
    h = hashlib.sha256(
        repr((img.stored.shape, img.stored.dtype.str, img.header.photometric_interpretation)).encode()
    )
    h.update(np.ascontiguousarray(img.stored).data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Format detection and DICOM parsing


def _sniff(path) -> str:
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        raise ImageRejected("empty_file", "the file is empty (0 bytes)")
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    return "dicom"  # confirmed (or refused) by dcmread(force=False)


def _read_dicom(path, **options) -> Dataset:
    """The dataset of a Part 10 file, or of a bare dataset (`_bare_dataset`), whose transfer syntax is then the
    encoding pydicom inferred, put into an otherwise empty file meta (the decoders read it from there). A bare
    dataset is the one case of `ds.preamble is None`."""
    _check_inflated_size(path)
    bare = _bare_dataset(path)
    try:
        ds = pydicom.dcmread(os.fspath(path), force=bare, **options)
    except MemoryError:  # over a decode worker's limit: the worker says so
        raise
    except InvalidDicomError as exc:
        raise ImageRejected(
            "not_an_image",
            "not DICOM (no 'DICM' marker after the 128-byte preamble, nor a DICOM dataset without one), PNG or "
            "JPEG (no PNG/JPEG signature)",
        ) from exc
    except (EOFError, struct.error) as exc:
        raise ImageRejected("truncated", "the file ends inside the DICOM header") from exc
    except Exception as exc:
        raise ImageRejected("decode_failed", f"the DICOM header could not be parsed ({type(exc).__name__})") from exc
    if bare:
        ds.file_meta = FileMetaDataset()  # little endian always: _bare_dataset saw group 0x0008 as such
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
    return ds


def _bare_dataset(path) -> bool:
    """Whether a file without the 'DICM' marker starts like a DICOM dataset without preamble and file meta: its
    first element is in group 0x0008, and its first _BARE_ELEMENTS elements (or as many as _BARE_HEAD_BYTES hold)
    parse in one little-endian encoding, with tags ascending and values inside the file. Explicit VR when the
    first element has a valid VR, else implicit (as pydicom decides). Whether it is an image is checked later."""
    with open(path, "rb") as f:
        head = f.read(_BARE_HEAD_BYTES)
        size = os.fstat(f.fileno()).st_size
    if head[128:132] == b"DICM" or len(head) < 8 or head[:2] != b"\x08\x00":
        return False
    explicit = head[4:6].decode("latin-1") in _VRS
    pos, last = 0, -1
    for _ in range(_BARE_ELEMENTS):
        if pos + 8 > len(head):
            break
        group, element = struct.unpack_from("<HH", head, pos)
        if (group << 16 | element) <= last:
            return False
        last = group << 16 | element
        if not explicit:
            (length,), pos = struct.unpack_from("<I", head, pos + 4), pos + 8
        elif (vr := head[pos + 4 : pos + 6].decode("latin-1")) not in _VRS:
            return False
        elif vr in _LONG_VRS:
            if pos + 12 > len(head) or head[pos + 6 : pos + 8] != b"\0\0":
                return False
            (length,), pos = struct.unpack_from("<I", head, pos + 8), pos + 12
        else:
            (length,), pos = struct.unpack_from("<H", head, pos + 6), pos + 8
        if length == _UNDEFINED_LENGTH:  # a sequence: its items are pydicom's to parse
            break
        pos += length
        if pos > size:
            return False
    return True


def _check_inflated_size(path) -> None:
    """pydicom inflates a deflated dataset whole, in one call: count its size first, in bounded steps and
    without keeping the output, and refuse a deflate bomb."""
    try:
        with open(path, "rb") as f:
            pydicom.filereader.read_preamble(f, False)
            # pydicom's own file meta reader, so that the dataset starts exactly where dcmread inflates from
            meta = pydicom.filereader._read_file_meta_info(f)
            if meta.get("TransferSyntaxUID") != _DEFLATED:
                return
            inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
            while (chunk := f.read(1 << 20)) and not inflater.eof:
                while chunk:
                    total += len(inflater.decompress(chunk, 1 << 24))
                    if total > MAX_INFLATED_BYTES:
                        raise ImageRejected(
                            "decode_limit",
                            f"the deflated dataset inflates to more than {MAX_INFLATED_BYTES >> 20} MB, more than "
                            "any accepted image needs",
                        )
                    chunk = inflater.unconsumed_tail
    except ImageRejected:
        raise
    except Exception:  # not DICOM, or a broken stream: dcmread says which
        return


def _dicom_header(ds: Dataset, path) -> ImageHeader:
    """Run the rejection checks of the module docstring on a (deferred-read) dataset; build the header."""
    try:
        return _checked_dicom_header(ds, path)
    except ImageRejected:
        raise
    except Exception as exc:  # a malformed value pydicom cannot convert (IS "abc", wrong-length US, ...)
        raise ImageRejected("decode_failed", f"the DICOM header could not be parsed ({type(exc).__name__})") from exc


def _checked_dicom_header(ds: Dataset, path) -> ImageHeader:
    warns: list[str] = []
    ts = ds.file_meta.get("TransferSyntaxUID")
    _check_truncation(ds, path, ts)

    if ds.preamble is None:  # a bare dataset (see _read_dicom): only an image's is taken for DICOM
        missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PixelData") if k not in ds]
        if missing:
            raise ImageRejected(
                "not_an_image",
                "no 'DICM' marker after a 128-byte preamble, and the DICOM dataset the file holds instead is not an "
                f"image (no {', '.join(missing)})",
            )
        warns.append(
            f"no DICOM preamble and file meta information: read as {ts.name}, the encoding of its first elements, "
            "with uncompressed pixel data"
        )
    if _PIXEL_DATA not in ds:
        raise ImageRejected("no_pixel_data", "the file has no PixelData element: there is no image to display")

    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality")
    secondary_capture = bool(sop_class and sop_class.startswith(SECONDARY_CAPTURE_PREFIX))
    accepted = RADIOGRAPH_MODALITIES | ({"OT", ""} if secondary_capture else set())
    if (modality or "").upper() not in accepted:
        what = f"Modality {_quote_cs(modality)}" if modality else "no Modality"
        raise ImageRejected(
            "not_radiograph",
            f"{what} with SOP class {UID(sop_class or '').name or 'missing'}: only radiographs (CR, DX, DR, RG) "
            "are accepted, and Secondary Capture images of no particular modality (OT)",
        )

    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageRejected("multiframe", f"the image has {frames} frames; only single-frame images are accepted")

    rows, cols = ds.get("Rows"), ds.get("Columns")
    _check_dimensions(rows, cols)

    bits_stored, bits_allocated = ds.get("BitsStored"), ds.get("BitsAllocated")
    if bits_stored is None or not 1 <= bits_stored <= 16:
        raise ImageRejected("unsupported_bits", f"BitsStored {bits_stored} is not supported; accepted: 1 to 16")
    if bits_allocated not in (1, 8, 16):
        raise ImageRejected("unsupported_bits", f"BitsAllocated {bits_allocated} is not supported; accepted: 1, 8, 16")

    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    samples = ds.get("SamplesPerPixel") or 1
    if photometric in COLOUR_PHOTOMETRICS and secondary_capture and samples == 3:
        warns.append(f"colour image ({photometric}) converted to grey")
    elif photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise ImageRejected(
            "unsupported_photometric",
            f"PhotometricInterpretation {_quote_cs(photometric) if photometric else 'missing'} with "
            f"{samples} sample(s) per pixel is not supported; accepted: MONOCHROME1, MONOCHROME2 "
            "(RGB, YBR_FULL, YBR_FULL_422 for Secondary Capture only)",
        )

    _check_transfer_syntax(ts)
    if ts.is_compressed:
        _check_frame_header(path, ds, ts, rows, cols, samples, bits_allocated)
    else:
        expected = (rows * cols * samples * bits_allocated + 7) // 8
        length = ds.get_item(_PIXEL_DATA, keep_deferred=True).length
        if length == _UNDEFINED_LENGTH:  # fragments of some compression the transfer syntax does not name
            raise ImageRejected(
                "unsupported_transfer_syntax",
                f"PixelData is encapsulated (compressed), but the transfer syntax {ts.name} is uncompressed"
                + (" (inferred: the file has no file meta information)" if ds.preamble is None else ""),
            )
        if length < expected:
            raise ImageRejected(
                "truncated",
                f"PixelData holds {length} bytes; {rows} x {cols} pixels at {bits_allocated} bits need {expected}",
            )

    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part.upper() not in CHEST_BODY_PARTS:
        warns.append(f"BodyPartExamined is {_quote_cs(body_part)}, not CHEST")
    spacing, spacing_source = _pixel_spacing(ds, warns)
    slope, intercept = _rescale(ds, warns)
    modality_lut, _ = _luts(ds, warns)
    center, width = _window(ds, warns, _value_range(ds, bits_stored, modality_lut, slope, intercept))
    study_date = _date(ds, "StudyDate")
    return ImageHeader(
        source_format="dicom",
        rows=int(rows),
        columns=int(cols),
        bits_stored=int(bits_stored),
        photometric_interpretation="MONOCHROME2" if photometric in COLOUR_PHOTOMETRICS else photometric,
        transfer_syntax_uid=str(ts),
        sop_class_uid=sop_class,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_age_years=_age_years(_text(ds, "PatientAge"), _date(ds, "PatientBirthDate"), study_date),
        patient_sex=sex if (sex := (_text(ds, "PatientSex") or "").upper()) in ("M", "F", "O") else None,
        study_date=study_date,
        study_description=_text(ds, "StudyDescription"),
        accession_number=_text(ds, "AccessionNumber"),
        modality=modality,
        body_part_examined=body_part,
        view_position=_text(ds, "ViewPosition"),
        pixel_spacing_mm=spacing,
        pixel_spacing_source=spacing_source,
        window_center=center,
        window_width=width,
        rescale_slope=slope,
        rescale_intercept=intercept,
        warnings=tuple(warns),
    )


def _check_truncation(ds: Dataset, path, ts: UID | None) -> None:
    if ts == _DEFLATED:  # value positions are offsets into the inflated stream, not the file
        return
    file_size = os.path.getsize(path)
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        # Elements never accessed are still raw and know where they lie; an undefined length never got here
        # without its delimiter (pydicom drops it, caught below).
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and raw.value_tell + raw.length > file_size:
            what = "PixelData" if tag == _PIXEL_DATA else f"element ({tag.group:04X},{tag.element:04X})"
            raise ImageRejected(
                "truncated",
                f"the file is cut short: {what} ends at byte {raw.value_tell + raw.length}, "
                f"the file has {file_size} bytes",
            )
    if _PIXEL_DATA not in ds:
        # pydicom stops silently (a warning) when encapsulated pixel data ends before its delimiter; the tag
        # itself being in the file tells that apart from a file without pixel data.
        tag_bytes = struct.pack("<HH" if ts != "1.2.840.10008.1.2.2" else ">HH", 0x7FE0, 0x0010)
        with open(path, "rb") as f:
            if tag_bytes in f.read():
                raise ImageRejected(
                    "truncated", "the file is cut short inside the pixel data (end of file before its last fragment)"
                )


def _check_frame_header(path, ds: Dataset, ts: UID, rows: int, cols: int, samples: int, bits_allocated: int) -> None:
    """The frame's own header against the DICOM header (module docstring), before any decoder sees it."""
    extended = ds.get("ExtendedOffsetTable")  # decoders prefer it to the Basic Offset Table
    if extended is not None and (len(extended) % 8 or any(struct.unpack(f"<{len(extended) // 8}Q", extended))):
        raise ImageRejected(
            "decode_failed", "the Extended Offset Table of a single-frame image points past its first fragment"
        )
    try:
        data = _frame_start(path, ds.get_item(_PIXEL_DATA, keep_deferred=True))
        if ts == _RLE:
            segments, expected = codestream.rle_segments(data), samples * max(1, bits_allocated // 8)
            if segments != expected:
                raise ImageRejected(
                    "frame_size_mismatch",
                    f"the RLE frame has {segments} segment(s); {samples} sample(s) of {bits_allocated} bits need {expected}",
                )
            return
        if ts in _JPEG_2000:
            info = codestream.jpeg2000(data)
        else:
            info = codestream.jpeg(data, codestream.JPEG_LS_FRAME_MARKERS if ts in _JPEG_LS else codestream.JPEG_FRAME_MARKERS)
    except codestream.CodestreamError as exc:
        raise ImageRejected("decode_failed", f"{ts.name} pixel data: {exc}") from exc
    if (info.rows, info.columns, info.components) != (rows, cols, samples) or info.precision > bits_allocated:
        raise ImageRejected(
            "frame_size_mismatch",
            f"the {ts.name} frame header says {info.rows} x {info.columns} pixels of {info.components} "
            f"component(s) at {info.precision} bits; the DICOM header says {rows} x {cols} pixels of {samples} "
            f"sample(s) in {bits_allocated} bits",
        )


def _frame_start(path, raw) -> bytes:
    """The first FRAME_HEADER_BYTES of the (single) frame: the fragments after the Basic Offset Table item
    (PS3.5 A.4), read from the file where pydicom deferred the PixelData, or from the value when it is small."""
    parts, size = [], 0
    with io.BytesIO(raw.value) if raw.value is not None else open(path, "rb") as f:
        if raw.value is None:
            f.seek(raw.value_tell)
        items = 0
        while size < FRAME_HEADER_BYTES and len(head := f.read(8)) == 8:
            group, element, length = struct.unpack("<HHI", head)
            if (group, element) != (0xFFFE, 0xE000):  # the sequence delimiter, or not an item at all
                break
            items += 1
            if items == 1:  # the Basic Offset Table: decoders start the frame where it points
                table = f.read(length) if length <= 4096 else b"?"
                if len(table) % 4 or any(struct.unpack(f"<{len(table) // 4}I", table)):
                    raise ImageRejected(
                        "decode_failed", "the Basic Offset Table of a single-frame image points past its first fragment"
                    )
                continue
            parts.append(f.read(min(length, FRAME_HEADER_BYTES - size)))
            size += len(parts[-1])
    return b"".join(parts)


def _check_dimensions(rows, cols) -> None:
    if rows is None or cols is None:
        raise ImageRejected("absurd_dimensions", "Rows or Columns is missing")
    if not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= cols <= MAX_SIDE) or rows * cols > MAX_PIXELS:
        raise ImageRejected(
            "absurd_dimensions",
            f"{rows} x {cols} pixels is outside the accepted size: each side {MIN_SIDE} to {MAX_SIDE}, "
            f"at most {MAX_PIXELS // 1_000_000} Mpixel",
        )


def _check_transfer_syntax(ts: UID | None) -> None:
    if ts is None:
        raise ImageRejected("unsupported_transfer_syntax", "the file meta has no TransferSyntaxUID")
    supported = ", ".join(u.name for u in SUPPORTED_TRANSFER_SYNTAXES)
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ImageRejected(
            "unsupported_transfer_syntax",
            f"Transfer syntax {ts} ({ts.name}) is not supported; supported: {supported}",
        )
    decoder = get_decoder(ts)
    if not decoder.is_available:
        raise ImageRejected(
            "unsupported_transfer_syntax",
            f"Transfer syntax {ts} ({ts.name}) needs a decoder that is not installed: "
            f"{'; '.join(decoder.missing_dependencies)}",
        )


# ---------------------------------------------------------------------------------------------------------
# DICOM attribute helpers: optional fields never reject a file, a malformed one is left out


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _quote_cs(value: str) -> str:
    return value if _CS_RE.fullmatch(value) else "(an unrecognised value)"


def _date(ds: Dataset, keyword: str) -> datetime.date | None:
    text = (_text(ds, keyword) or "").replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _age_years(age: str | None, birth: datetime.date | None, study: datetime.date | None) -> int | None:
    """PatientAge "061Y" -> 61, "006M"/"003W"/"010D" -> 0; a bare number (non-standard, seen in public sets)
    is read as years. Otherwise whole years from PatientBirthDate to StudyDate."""
    if age and (m := re.fullmatch(r"(\d{1,3})([YMWD]?)", age.upper())):
        return int(m[1]) if m[2] in ("Y", "") else 0
    if birth and study and study >= birth:
        return study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
    return None


def _pixel_spacing(ds: Dataset, warns: list[str]) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            row = col = math.nan
        if plausible_spacing(row, col):
            if keyword == "ImagerPixelSpacing":
                warns.append("pixel spacing from ImagerPixelSpacing (at the detector, not corrected for magnification)")
            return (row, col), keyword
        warns.append(
            f"{keyword} is not two numbers from {SPACING_MIN_MM} to {SPACING_MAX_MM} mm and was ignored: "
            "lengths are measured in pixels"
        )
    return None, None


def _rescale(ds: Dataset, warns: list[str]) -> tuple[float, float]:
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    try:  # absent or empty: the identity
        slope, intercept = (float(default if v in (None, "") else v) for v, default in ((slope, 1.0), (intercept, 0.0)))
    except (TypeError, ValueError):
        slope = intercept = math.nan
    if usable_rescale(slope, intercept):
        return slope, intercept
    warns.append(
        f"RescaleSlope / RescaleIntercept are not finite with {RESCALE_SLOPE_MIN:g} <= |slope| <= {RESCALE_MAX:g} "
        f"and |intercept| <= {RESCALE_MAX:g}: ignored, slope 1 and intercept 0 used"
    )
    return 1.0, 0.0


def _window(ds: Dataset, warns: list[str], value_range: tuple[float, float]) -> tuple[float | None, float | None]:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:  # absent or empty
        return None, None
    try:  # multi-valued: the first pair is the default view (PS3.3 C.11.2.1.2)
        center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (center, width))
    except (TypeError, ValueError, IndexError):
        warns.append("WindowCenter/WindowWidth are malformed and were ignored")
        return None, None
    if not (math.isfinite(center) and math.isfinite(width)):
        warns.append("WindowCenter/WindowWidth are not finite numbers and were ignored: the full range is shown")
        return None, None
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    if not (width >= 1 if _voi_lut_function(ds) == "LINEAR" else width > 0):
        warns.append(f"WindowWidth {width:g} is not valid and was ignored")
        return None, None
    lo, hi = value_range
    if center + width / 2 <= lo or center - width / 2 >= hi + 1 or width > WINDOW_MAX_WIDTH_FACTOR * (hi - lo + 1):
        warns.append(
            f"WindowCenter/WindowWidth {center:g}/{width:g} do not fit the values this image can hold "
            f"({lo:g} to {hi:g}) and were ignored: the full range is shown"
        )
        return None, None
    return center, width


def _value_range(ds: Dataset, bits_stored: int, modality_lut: Lut | None, slope: float, intercept: float):
    """The smallest and largest modality value the stored bits can give."""
    if modality_lut is not None:
        return float(modality_lut.table.min()), float(modality_lut.table.max())
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if ds.get("PixelRepresentation") == 1 else (0, 2**bits_stored - 1)
    return min(lo * slope, hi * slope) + intercept, max(lo * slope, hi * slope) + intercept


def _voi_lut_function(ds: Dataset) -> str:
    function = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
    return function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"


def _luts(ds: Dataset, warns: list[str]) -> tuple[Lut | None, Lut | None]:
    """The first items of the Modality LUT and VOI LUT Sequences; a malformed one is None, with a warning.
    The header checks and the decode worker call this alike, so both use the same tables."""
    luts = []
    for keyword, fallback in (("ModalityLUTSequence", "rescale"), ("VOILUTSequence", "window")):
        try:
            sequence = ds.get(keyword)
            luts.append(_lut(sequence[0], ds) if sequence else None)
        except Exception as exc:  # what pydicom raises on a malformed item, or ours below
            reason = exc.args[0] if isinstance(exc, _BadLut) else type(exc).__name__
            warns.append(f"{keyword} is malformed ({reason}) and was ignored: {fallback} used instead")
            luts.append(None)
    return luts[0], luts[1]


class _BadLut(ValueError):
    """A LUT that parses but cannot be used; the message names the problem, without values."""


def _lut(item: Dataset, ds: Dataset) -> Lut:
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    if descriptor is None or data is None or len(descriptor) != 3:
        raise _BadLut("no LUTDescriptor of 3 values, or no LUTData")
    entries, first, bits = (int(v) for v in descriptor)
    entries = entries or 65536  # 0 means 2**16 (PS3.3 C.11.1.1)
    if not 1 <= bits <= 16:
        raise _BadLut(f"{bits} bits per entry; 1 to 16 are possible")
    if ds.get("PixelRepresentation") == 1 and first >= 32768:  # first mapped value is SS for signed pixels
        first -= 65536
    if isinstance(data, bytes):  # OW: words in the dataset's byte order
        data = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if ds.original_encoding[1] is not False else ">u2")
    table = np.asarray(data, dtype=np.float64).ravel()
    if table.size < entries:
        raise _BadLut(f"LUTData holds {table.size} entries, LUTDescriptor says {entries}")
    return Lut(first_mapped=first, table=table[:entries], bits=bits)


# ---------------------------------------------------------------------------------------------------------
# PNG / JPEG


def _raster_header(path, kind: str) -> ImageHeader:
    try:
        with Image.open(path) as im:  # lazy: reads IHDR / SOF only
            cols, rows = im.size
    except Image.DecompressionBombError as exc:  # PIL's own cap, above ours
        raise ImageRejected("absurd_dimensions", f"the {kind.upper()} is larger than {MAX_PIXELS // 1_000_000} Mpixel") from exc
    except Exception as exc:
        raise ImageRejected("decode_failed", f"the {kind.upper()} header could not be read ({type(exc).__name__})") from exc
    _check_dimensions(rows, cols)
    bits = 8
    if kind == "png":
        with open(path, "rb") as f:
            bits = 16 if f.read(25)[24:25] == b"\x10" else 8  # IHDR bit depth; 1/2/4-bit grey is expanded to 8
    return ImageHeader(source_format=kind, rows=rows, columns=cols, bits_stored=bits,
                       photometric_interpretation="MONOCHROME2")


def _decode_raster(path: str, header: ImageHeader) -> DecodedImage:
    """In a decode worker: the pixels of a PNG / JPEG whose header passed read_header."""
    with sandbox.captured_output() as output:
        arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    header = replace(header, warnings=(*header.warnings, *_decoder_warnings(output)))
    what = header.source_format.upper()
    if arr is None or arr.dtype not in (np.uint8, np.uint16):
        raise ImageRejected("decode_failed", f"the {what} data could not be decoded (corrupt or truncated)")
    if arr.shape[:2] != (header.rows, header.columns):
        raise ImageRejected("decode_failed", f"the decoded {what} is {arr.shape[:2]}, its header says "
                                             f"{header.rows} x {header.columns}")
    if arr.ndim == 3:
        bgr = arr[:, :, :3]  # drop alpha
        if (bgr == bgr[:, :, :1]).all():
            arr = bgr[:, :, 0]
        else:
            arr = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            header = replace(header, warnings=(*header.warnings, "colour image converted to grey"))
    return DecodedImage(header=header, stored=arr)


# ---------------------------------------------------------------------------------------------------------
# Decoding (in a worker process, see load)


def _decode_dicom(path: str, header: ImageHeader) -> DecodedImage:
    """In a decode worker: the pixels and lookup tables of a DICOM whose header passed read_header."""
    ds = _read_dicom(path)
    try:
        with sandbox.captured_output() as output:  # only the decoder: pydicom's own warnings may quote values
            arr = ds.pixel_array  # pydicom converts YBR to RGB here (as_rgb default)
    except Exception as exc:  # over the memory limit too: the worker finds MemoryError in the chain
        name = UID(header.transfer_syntax_uid).name
        raise ImageRejected("decode_failed", f"{name} pixel data could not be decoded ({type(exc).__name__})") from exc
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    if arr.shape != (header.rows, header.columns):
        raise ImageRejected(
            "decode_failed",
            f"decoded pixel array is {arr.shape}, header says {header.rows} x {header.columns}",
        )
    modality_lut, voi_lut = _luts(ds, [])  # read_header warned already
    return DecodedImage(
        header=replace(header, warnings=(*header.warnings, *_decoder_warnings(output))),
        stored=arr,
        voi_lut=voi_lut,
        modality_lut=modality_lut,
        rescale_slope=header.rescale_slope,
        rescale_intercept=header.rescale_intercept,
        voi_lut_function=_voi_lut_function(ds),
    )


def _decoder_warnings(output: list[str]) -> tuple[str, ...]:
    """What a decoder printed or warned ("Corrupt JPEG data: premature end of data segment"): printable ASCII,
    each line once, at most three. Lines that quote something are left out: that is how pydicom's own warnings
    cite header values, which never go into a stored warning."""
    lines = dict.fromkeys(
        text for line in output if (text := re.sub(r"[^ -~]", "", line).strip()[:160]) and not re.search("['\"`]", text)
    )
    return tuple(f"the decoder reported: {text}" for text in list(lines)[:3])


def _readonly(arr: np.ndarray) -> np.ndarray:
    """Decoded images are shared through caches: make accidental writes fail loudly."""
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr



def source_dataset(path: str | os.PathLike) -> Dataset:
    """The header of a stored DICOM file without its pixel data: the source a SEG or SR derived from it must
    reference (study, series, SOP instance, patient module). Only for files import has already checked."""
    return _read_dicom(path, stop_before_pixels=True)
