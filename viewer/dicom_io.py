"""Reading radiographs: DICOM (the only `pydicom.dcmread` caller in the repository), PNG and JPEG.

What is accepted, and the `ImageRejected.code` of everything else:

- Format. Empty file: "empty_file". PNG and JPEG are recognised by their signature. Anything else must be DICOM
  with the 'DICM' marker after the 128-byte preamble (pydicom with force=False); otherwise "not_an_image".
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
  Then decoding; any decoder failure is "decode_failed".
- PNG / JPEG: dimensions from the IHDR / SOF (PIL, lazily) with the same size caps, then cv2.imdecode (16-bit
  PNG kept). Colour is converted to grey, with a warning only when the channels actually differ; alpha is
  dropped. Undecodable data: "decode_failed".

Non-fatal findings go into `ImageHeader.warnings`: BodyPartExamined other than CHEST/THORAX/LUNG, colour
converted to grey, unusable PixelSpacing or WindowWidth, spacing taken from ImagerPixelSpacing.

Messages are PHI-free: they name attributes, UIDs of transfer syntaxes and SOP classes, sizes and coded
values (CS), never names, ids, dates or free text, and never the text of a parser exception (pydicom's
messages can quote header values); the exception is chained for developers instead.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import struct
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID

REJECTION_CODES = frozenset({
    "not_an_image", "truncated", "no_pixel_data", "unsupported_photometric", "unsupported_transfer_syntax",
    "absurd_dimensions", "unsupported_bits", "multiframe", "not_radiograph", "decode_failed", "empty_file",
})


class ImageRejected(Exception):
    """The one typed error of this module: a stable `code` (see REJECTION_CODES) and a PHI-free message."""

    def __init__(self, code: str, message: str):
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


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
# Binary VRs never shown in the header panel.
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
# Coded strings (CS) are safe to quote in messages; anything else in such a field is not quoted.
_CS_RE = re.compile(r"[A-Z0-9 _]{1,16}")
# Elements larger than this are not read by read_header (pixel data, big private blobs).
_DEFER_BYTES = 4096


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


def load(path: str | os.PathLike) -> DecodedImage:
    """read_header's checks, then decode; every parser/decoder failure is an ImageRejected."""
    header = read_header(path)
    if header.source_format != "dicom":
        return _load_raster(path, header)
    ds = _read_dicom(path)
    try:
        arr = ds.pixel_array  # pydicom converts YBR to RGB here (as_rgb default)
    except Exception as exc:
        name = UID(header.transfer_syntax_uid).name
        raise ImageRejected("decode_failed", f"{name} pixel data could not be decoded ({type(exc).__name__})") from exc
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    if arr.shape != (header.rows, header.columns):
        raise ImageRejected(
            "decode_failed",
            f"decoded pixel array is {arr.shape}, header says {header.rows} x {header.columns}",
        )
    try:
        return DecodedImage(
            header=header,
            stored=_readonly(arr),
            voi_lut=_lut(ds.VOILUTSequence[0], ds) if ds.get("VOILUTSequence") else None,
            modality_lut=_lut(ds.ModalityLUTSequence[0], ds) if ds.get("ModalityLUTSequence") else None,
            rescale_slope=float(ds.get("RescaleSlope") or 1.0),
            rescale_intercept=float(ds.get("RescaleIntercept") or 0.0),
            voi_lut_function=_voi_lut_function(ds),
        )
    except Exception as exc:  # a malformed LUT descriptor or rescale value
        raise ImageRejected(
            "decode_failed", f"the Modality LUT / VOI LUT / rescale attributes could not be read ({type(exc).__name__})"
        ) from exc


def header_elements(path: str | os.PathLike) -> list[tuple[str, str, str, str]]:
    """(tag, keyword, VR, value) of the file meta and top-level dataset for the header panel; [] for PNG/JPEG.

    Bulk binary elements (pixel data included) are left out, sequences read "<sequence of N items>", values are
    cut to 200 characters."""
    if _sniff(path) != "dicom":
        return []
    ds = _read_dicom(path, stop_before_pixels=True)
    rows = []
    for elem in [*ds.file_meta, *ds]:
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
    try:
        return pydicom.dcmread(os.fspath(path), force=False, **options)
    except InvalidDicomError as exc:
        raise ImageRejected(
            "not_an_image",
            "not DICOM (no 'DICM' marker after the 128-byte preamble), PNG or JPEG (no PNG/JPEG signature)",
        ) from exc
    except (EOFError, struct.error) as exc:
        raise ImageRejected("truncated", "the file ends inside the DICOM header") from exc
    except Exception as exc:
        raise ImageRejected("decode_failed", f"the DICOM header could not be parsed ({type(exc).__name__})") from exc


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
    if not ts.is_compressed:
        expected = (rows * cols * samples * bits_allocated + 7) // 8
        length = ds.get_item(_PIXEL_DATA, keep_deferred=True).length
        if length < expected:
            raise ImageRejected(
                "truncated",
                f"PixelData holds {length} bytes; {rows} x {cols} pixels at {bits_allocated} bits need {expected}",
            )

    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part.upper() not in CHEST_BODY_PARTS:
        warns.append(f"BodyPartExamined is {_quote_cs(body_part)}, not CHEST")
    spacing, spacing_source = _pixel_spacing(ds, warns)
    center, width = _window(ds, warns)
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
            row = col = 0.0
        if row > 0 and col > 0:
            if keyword == "ImagerPixelSpacing":
                warns.append("pixel spacing from ImagerPixelSpacing (at the detector, not corrected for magnification)")
            return (row, col), keyword
        warns.append(f"{keyword} is not two positive numbers and was ignored")
    return None, None


def _window(ds: Dataset, warns: list[str]) -> tuple[float | None, float | None]:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:  # absent or empty
        return None, None
    try:  # multi-valued: the first pair is the default view (PS3.3 C.11.2.1.2)
        center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (center, width))
    except (TypeError, ValueError, IndexError):
        warns.append("WindowCenter/WindowWidth are malformed and were ignored")
        return None, None
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    if not (width >= 1 if _voi_lut_function(ds) == "LINEAR" else width > 0):
        warns.append(f"WindowWidth {width:g} is not valid and was ignored")
        return None, None
    return center, width


def _voi_lut_function(ds: Dataset) -> str:
    function = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
    return function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"


def _lut(item: Dataset, ds: Dataset) -> Lut:
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # 0 means 2**16 (PS3.3 C.11.1.1)
    if ds.get("PixelRepresentation") == 1 and first >= 32768:  # first mapped value is SS for signed pixels
        first -= 65536
    data = item.LUTData
    if isinstance(data, bytes):  # OW: words in the dataset's byte order
        data = np.frombuffer(data, dtype="<u2" if ds.original_encoding[1] is not False else ">u2")
    return Lut(first_mapped=first, table=np.asarray(data, dtype=np.float64)[:entries], bits=bits)


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


def _load_raster(path, header: ImageHeader) -> DecodedImage:
    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
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
    return DecodedImage(header=header, stored=_readonly(arr))


def _readonly(arr: np.ndarray) -> np.ndarray:
    """Decoded images are shared through caches: make accidental writes fail loudly."""
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr

