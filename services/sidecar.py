"""Patient and view metadata for PNG/JPEG files, which carry none, from a CSV beside them.

Columns are named by DICOM keyword (file, PatientID, IssuerOfPatientID, PatientAge, PatientSex, ViewPosition,
StudyDate, StudyDescription), as in the NIH ChestX-ray14 `Data_Entry_2017.csv` (Image Index, Patient ID, Patient
Age, Patient Gender, View Position) or as in the ieee8023 COVID-19 collection (patientid, age, sex, view, offset:
days since symptoms, which dates a film given a day zero). Rows are matched to files by file name. DICOM files
ignore it: their header is the truth."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

ALIASES = {
    "file": ("file", "Image Index"),
    "patient_id": ("PatientID", "Patient ID", "patientid"),
    "issuer_of_patient_id": ("IssuerOfPatientID",),
    "patient_age_years": ("PatientAge", "Patient Age", "age"),
    "patient_sex": ("PatientSex", "Patient Gender", "sex"),
    "view_position": ("ViewPosition", "View Position", "view"),
    "study_date": ("StudyDate",),
    "offset": ("offset",),
    "study_description": ("StudyDescription",),
}


MAX_OFFSET_DAYS = 36_500  # an `offset` beyond a century from day zero is a typo, not a film's date


class SidecarError(Exception):
    pass


def _age(raw: str) -> int | None:
    digits = raw.rstrip("Yy")
    try:
        years = float(digits)  # "061Y", "61", and "61.0" as the COVID-19 collection writes it
    except ValueError:
        return None
    return int(years) if 0 <= years <= 130 else None


def _date(raw: str) -> dt.date | None:
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(raw, fmt).date()
        except ValueError:
            pass
    return None


def load(path: Path, *, issuer: str | None = None, day_zero: dt.date | None = None) -> dict[str, dict]:
    """{file name: {header field: value}} from the CSV at path.

    issuer: the IssuerOfPatientID of every row that names none: patient ids are only unique per issuer, so the
        ids of two data sets must not link their patients' studies. day_zero: the date an `offset` column (in
        days) counts from; it gives a row without a StudyDate its date (without day_zero offsets are ignored)."""
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
                        if (age := _age(raw)) is None:
                            raise SidecarError(
                                f"{path.name} line {line}: age {raw!r} is not a whole number of years"
                            )
                        values[field] = age
                    elif field == "study_date":
                        if (date := _date(raw)) is None:
                            raise SidecarError(f"{path.name} line {line}: StudyDate {raw!r} is not YYYYMMDD")
                        values[field] = date
                    elif field == "offset":
                        try:
                            days = int(float(raw))  # "inf" and "1e400" overflow: ValueError's cousin
                        except (ValueError, OverflowError):
                            raise SidecarError(f"{path.name} line {line}: offset {raw!r} is not a number of days") from None
                        if abs(days) > MAX_OFFSET_DAYS:
                            raise SidecarError(f"{path.name} line {line}: offset {raw!r} is more than "
                                               f"{MAX_OFFSET_DAYS} days (a century) from day zero")  # fmt: skip
                        if day_zero is not None:
                            try:
                                values.setdefault("study_date", day_zero + dt.timedelta(days=days))
                            except OverflowError:  # a day zero near year 1 or 9999
                                raise SidecarError(f"{path.name} line {line}: offset {raw!r} from the day zero "
                                                   "leaves the calendar (years 1–9999)") from None  # fmt: skip
                    elif field == "patient_sex":
                        values[field] = raw[0].upper() if raw[0].upper() in "MFO" else None
                    else:
                        values[field] = raw.upper() if field == "view_position" else raw
                if issuer and "patient_id" in values:
                    values.setdefault("issuer_of_patient_id", issuer)
                out[Path(row[columns["file"]]).name] = values
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SidecarError(f"cannot read metadata CSV {path.name}: {exc}") from exc
