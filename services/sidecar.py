"""Patient and view metadata for PNG/JPEG files, which carry none, from a CSV beside them.

Columns are named by DICOM keyword (file, PatientID, PatientAge, PatientSex, ViewPosition, StudyDescription) or as
in the NIH ChestX-ray14 `Data_Entry_2017.csv` (Image Index, Patient ID, Patient Age, Patient Gender, View Position).
Rows are matched to files by file name. DICOM files ignore it: their header is the truth."""

from __future__ import annotations

import csv
from pathlib import Path

ALIASES = {
    "file": ("file", "Image Index"),
    "patient_id": ("PatientID", "Patient ID"),
    "patient_age_years": ("PatientAge", "Patient Age"),
    "patient_sex": ("PatientSex", "Patient Gender"),
    "view_position": ("ViewPosition", "View Position"),
    "study_description": ("StudyDescription",),
}


class SidecarError(Exception):
    pass


def load(path: Path) -> dict[str, dict]:
    """{file name: {header field: value}} from the CSV at path."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = {
                field: next((c for c in names if c in (reader.fieldnames or [])), None)
                for field, names in ALIASES.items()
            }
            if columns["file"] is None:
                raise SidecarError(f"{path.name}: no file name column (expected one of {ALIASES['file']})")
            out = {}
            for line, row in enumerate(reader, 2):
                values = {}
                for field, col in columns.items():
                    raw = (row.get(col) or "").strip() if col else ""
                    if field == "file" or not raw:
                        continue
                    if field == "patient_age_years":
                        digits = raw.rstrip("Yy")
                        if not digits.isdigit() or not 0 <= int(digits) <= 130:
                            raise SidecarError(
                                f"{path.name} line {line}: age {raw!r} is not a whole number of years"
                            )
                        values[field] = int(digits)
                    elif field == "patient_sex":
                        values[field] = raw[0].upper() if raw[0].upper() in "MFO" else None
                    else:
                        values[field] = raw.upper() if field == "view_position" else raw
                out[Path(row[columns["file"]]).name] = values
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SidecarError(f"cannot read metadata CSV {path.name}: {exc}") from exc
