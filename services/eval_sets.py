"""Evaluation sets: named, versioned lists of images with ground truth from one source, made from a folder with
an NIH-style labels CSV or from stored studies (a worklist filter). A version is the sha256 of the file list and
labels: making a set again with the same content gives back the same version, other content the next one.

Bad rows are not fatal: each row left out is reported with its reason (unknown finding, image not found or not
readable, no ground truth), and the rest make the set. Reports carry file names or image ids, never patient
identifiers."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db import accounts, audit, repo
from db import engine as dbe
from db.models import (
    AnnotationStatus,
    AnnotationVersion,
    EvalSet,
    EvalSetItem,
    Image,
    ReportStatus,
    ReportVersion,
    Study,
    User,
    Verdict,
)
from reports import labeller
from services import importer
from services.context import Context
from services.vocabulary import FINDINGS, NO_FINDING
from viewer import dicom_io

log = logging.getLogger(__name__)
TRUTH_SOURCES = {
    "csv": "labels CSV",
    "verdicts": "radiologists' verdicts",
    "annotations": "annotators' final labels",
    "reports": "labels from signed report text",
}
REQUIRED_COLUMNS = ("Image Index", "Finding Labels")
VERDICT_TRUTH = {"accept": True, "reject": False}  # uncertain: no answer
MAX_CSV_BYTES = 50 * 2**20  # a labels file larger than this is refused before it is read
MAX_CSV_ROWS = 20_000  # and one with more rows (each row's image is read and hashed when the set is made)


class EvalSetRefused(Exception):
    """The set cannot be made at all (no usable row, missing columns, unreadable CSV, empty name)."""


@dataclass(frozen=True)
class Row:
    """One item as made: a file of the folder (file_name) or a stored image (image_id), its labels."""

    pixel_sha256: str
    labels: dict[str, bool | None]
    file_name: str | None = None
    image_id: int | None = None
    patient_sex: str | None = None
    patient_age_years: int | None = None
    view_position: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class SetInfo:
    id: int
    name: str
    version: int
    content_sha256: str
    kind: str
    truth_source: str
    folder: str | None
    findings: list[str]
    n_items: int
    report: list[dict]
    created_by: str | None
    created_at: dt.datetime

    @property
    def label(self) -> str:
        return (
            f"{self.name} v{self.version} ({self.n_items} images, truth: {TRUTH_SOURCES[self.truth_source]})"
        )


@dataclass
class Made:
    """What creating a set did: the set, whether this content was new, the rows left out and why."""

    info: SetInfo
    new: bool
    left_out: list[dict] = field(default_factory=list)


# --- reading a folder and its labels CSV ----------------------------------------------------------------------
def _age(raw: str) -> int | None:
    digits = raw.strip().rstrip("Yy")
    return int(digits) if digits.isdigit() and 0 <= int(digits) <= 130 else None


def _sex(raw: str) -> str | None:
    raw = raw.strip().upper()
    return raw[0] if raw[:1] in ("M", "F") else None


def _read_csv(csv_path: Path) -> str:
    """The labels file's text: a regular file (a FIFO or a device would block or never end) of at most
    MAX_CSV_BYTES, checked on the opened file itself."""
    if not csv_path.exists():
        raise EvalSetRefused(f"labels CSV {csv_path.name} does not exist")
    if not csv_path.is_file():
        raise EvalSetRefused(f"labels CSV {csv_path.name} is not a regular file")
    fd = os.open(csv_path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EvalSetRefused(f"labels CSV {csv_path.name} is not a regular file")
        if st.st_size > MAX_CSV_BYTES:
            raise EvalSetRefused(f"labels CSV {csv_path.name} is larger than {MAX_CSV_BYTES // 2**20} MB")
        data = fh.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:  # it grew meanwhile
        raise EvalSetRefused(f"labels CSV {csv_path.name} is larger than {MAX_CSV_BYTES // 2**20} MB")
    return data.decode("utf-8-sig")


def read_folder(folder: Path, csv_path: Path, max_bytes: int) -> tuple[list[Row], list[str], list[dict]]:
    """(rows, findings, problems) of an NIH-style CSV ("Image Index", "Finding Labels" |-separated or "No
    Finding"; "Patient Age", "Patient Gender", "View Position" and "Source" used when present) whose images lie
    in `folder`. Problems: {"line", "file", "reason"} per row left out."""
    if not str(folder).strip() or not str(csv_path).strip():
        raise EvalSetRefused("give the image folder and the labels CSV")
    folder, csv_path = Path(folder), Path(csv_path)
    if not folder.is_dir():
        raise EvalSetRefused(f"image folder {folder} does not exist")
    try:
        reader = csv.DictReader(io.StringIO(_read_csv(csv_path), newline=""))
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EvalSetRefused(f"{csv_path.name} lacks the column(s) {', '.join(missing)}")
        lines = []
        for line in enumerate(reader, 2):
            if len(lines) == MAX_CSV_ROWS:
                raise EvalSetRefused(f"labels CSV {csv_path.name} has more than {MAX_CSV_ROWS:,} rows: split the set")
            lines.append(line)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalSetRefused(f"cannot read labels CSV {csv_path.name}: {exc}") from exc
    rows, problems, seen = [], [], set()
    for line, r in lines:
        name = (r.get("Image Index") or "").strip()
        named = [f.strip() for f in (r.get("Finding Labels") or "").split("|") if f.strip()]
        unknown = [f for f in named if f not in FINDINGS and f != NO_FINDING]
        reason = None
        if not name:
            reason = "no file name"
        elif Path(name).name != name:
            reason = "file name with a folder in it"
        elif name in seen:
            reason = "file named twice"
        elif not named:
            reason = "no finding labels"
        elif unknown:
            reason = f"unknown finding(s) {', '.join(unknown)}"
        elif not (folder / name).is_file():
            reason = "image not found in the folder"
        if reason is None:
            try:
                img = importer.load_checked(folder / name, max_bytes=max_bytes)
            except importer.FileRejected as exc:
                reason = f"image not readable: {exc.reason}"
        if reason is not None:
            problems.append({"line": line, "file": name, "reason": reason})
            continue
        seen.add(name)
        rows.append(Row(
            pixel_sha256=dicom_io.pixel_sha256(img), file_name=name,
            labels={f: f in named for f in FINDINGS},
            patient_sex=_sex(r.get("Patient Gender") or ""), patient_age_years=_age(r.get("Patient Age") or ""),
            view_position=(r.get("View Position") or "").strip().upper() or None,
            source=(r.get("Source") or "").strip() or folder.name,
        ))  # fmt: skip
    return rows, list(FINDINGS), problems


# --- stored studies and their ground truth ---------------------------------------------------------------------
def _verdict_truth(s, image_ids: list[int]) -> dict[int, dict[str, bool | None]]:
    """Per image, per finding: the radiologists' majority of accept (present) and reject (absent); a tie or
    only "uncertain" gives no answer (None). One vote per reader: a reader who judged the finding under several
    model versions votes with the newest verdict."""
    newest: dict[tuple[int, str, int], bool | None] = {}
    q = (
        select(Verdict.image_id, Verdict.item_key, Verdict.reader_id, Verdict.decision)
        .join(User, User.id == Verdict.reader_id)
        .where(Verdict.image_id.in_(image_ids), Verdict.item_kind == "finding", User.role == "radiologist")
        .order_by(Verdict.updated_at, Verdict.id)
    )
    for image_id, finding, reader_id, decision in s.execute(q):
        if finding in FINDINGS:
            newest[image_id, finding, reader_id] = VERDICT_TRUTH.get(decision.value)  # later rows win
    votes: dict[int, dict[str, list[bool]]] = {}
    for (image_id, finding, _), vote in newest.items():
        per = votes.setdefault(image_id, {}).setdefault(finding, [])
        if vote is not None:
            per.append(vote)
    out = {}
    for image_id, per in votes.items():
        out[image_id] = {}
        for finding, v in per.items():
            yes, no = sum(v), len(v) - sum(v)
            out[image_id][finding] = True if yes > no else False if no > yes else None
    return out


def _annotation_truth(s, image_ids: list[int]) -> dict[int, dict[str, bool | None]]:
    """Per image, the newest final labels (any task): present True, absent False, uncertain None."""
    out = {}
    q = (
        select(AnnotationVersion.image_id, AnnotationVersion.labels)
        .where(AnnotationVersion.image_id.in_(image_ids), AnnotationVersion.status == AnnotationStatus.final)
        .order_by(AnnotationVersion.id)
    )
    for image_id, labels in s.execute(q):
        values = json.loads(labels or "{}")
        out[image_id] = {
            f: {"present": True, "absent": False}.get(v) for f, v in values.items() if f in FINDINGS
        }
    return {i: v for i, v in out.items() if v}


def _report_truth(s, image_ids: list[int]) -> dict[int, dict[str, bool | None]]:
    """Per image, the findings of its study's newest signed report (any reader), read by the report labeller:
    present True, negated False, uncertain None, not mentioned False (the reader signed a report without it)."""
    study_of = dict(s.execute(select(Image.id, Image.study_id).where(Image.id.in_(image_ids))).all())
    newest = (
        select(func.max(ReportVersion.id))
        .where(ReportVersion.study_id.in_(set(study_of.values())), ReportVersion.status == ReportStatus.final)
        .group_by(ReportVersion.study_id)
    )
    texts = dict(
        s.execute(
            select(ReportVersion.study_id, ReportVersion.text).where(ReportVersion.id.in_(newest))
        ).all()
    )
    by_study = {}
    for study_id, text in texts.items():
        values = labeller.values(labeller.label(text))
        by_study[study_id] = {f: {1: True, 0: False, None: False}.get(values.get(f)) for f in FINDINGS}
    return {i: by_study[st] for i, st in study_of.items() if st in by_study}


def read_database(
    ctx: Context, f: repo.WorklistFilter, truth_source: str
) -> tuple[list[Row], list[str], list[dict]]:
    """(rows, findings, problems) of the images of the studies the worklist filter matches, labelled by
    `truth_source` (verdicts | annotations). An image without any answer from the source is left out."""
    readers = {"verdicts": _verdict_truth, "annotations": _annotation_truth, "reports": _report_truth}
    if truth_source not in readers:
        raise EvalSetRefused(
            f"stored studies take their truth from verdicts, annotations or reports, not {truth_source}"
        )
    with dbe.read(ctx.engine) as s:
        ids = repo.image_ids(s, f)
        if not ids:
            raise EvalSetRefused("no stored study matches the filter")
        truth = readers[truth_source](s, ids)
        images = s.execute(
            select(Image, Study)
            .join(Study, Study.id == Image.study_id)
            .where(Image.id.in_(ids))
            .order_by(Image.id)
        ).all()
        rows, problems = [], []
        for image, study in images:
            labels = truth.get(image.id, {})
            if not any(v is not None for v in labels.values()):
                problems.append(
                    {"image_id": image.id, "reason": f"no ground truth from {TRUTH_SOURCES[truth_source]}"}
                )
                continue
            rows.append(Row(
                pixel_sha256=image.pixel_sha256, image_id=image.id, labels=labels,
                patient_sex=study.patient_sex, patient_age_years=study.patient_age_years,
                view_position=(image.view_position or study.view_position or "").upper() or None,
                source=image.modality or image.source_format,
            ))  # fmt: skip
    findings = [f for f in FINDINGS if any(f in r.labels for r in rows)]
    return rows, findings, problems


# --- storing, versioning, reading back --------------------------------------------------------------------------
def content_sha256(truth_source: str, rows: list[Row]) -> str:
    """The version's identity: the truth source, each item's file (name or image id, and pixel hash) and labels,
    in order."""
    items = [[r.file_name, r.image_id, r.pixel_sha256, sorted(r.labels.items())] for r in rows]
    return hashlib.sha256(json.dumps([truth_source, items], sort_keys=True).encode()).hexdigest()


def _info(row: EvalSet, names: dict[int, str]) -> SetInfo:
    return SetInfo(row.id, row.name, row.version, row.content_sha256, row.kind, row.truth_source, row.folder,
                   json.loads(row.findings), row.n_items, json.loads(row.report), names.get(row.created_by_id),
                   row.created_at)  # fmt: skip


def store(
    ctx: Context, name: str, kind: str, truth_source: str, rows: list[Row], findings: list[str],
    problems: list[dict], user_id: int, folder: str | None = None,
) -> Made:  # fmt: skip
    """Store the rows as the next version of `name`, or give back the version with this very content."""
    name = name.strip()
    if not name:
        raise EvalSetRefused("give the set a name")
    if not rows:
        raise EvalSetRefused(f"no usable row: {len(problems)} left out")
    digest = content_sha256(truth_source, rows)

    def tx(s):
        same = s.scalar(select(EvalSet).where(EvalSet.name == name, EvalSet.content_sha256 == digest))
        if same is not None:
            return same.id, False
        version = (s.scalar(select(func.max(EvalSet.version)).where(EvalSet.name == name)) or 0) + 1
        row = EvalSet(name=name, version=version, content_sha256=digest, kind=kind, truth_source=truth_source,
                      folder=folder, findings=json.dumps(findings), n_items=len(rows),
                      report=json.dumps(problems), created_by_id=user_id)  # fmt: skip
        s.add(row)
        s.flush()
        s.add_all(
            EvalSetItem(set_id=row.id, position=i, image_id=r.image_id, file_name=r.file_name,
                        pixel_sha256=r.pixel_sha256, labels=json.dumps(r.labels), patient_sex=r.patient_sex,
                        patient_age_years=r.patient_age_years, view_position=r.view_position, source=r.source)
            for i, r in enumerate(rows)
        )  # fmt: skip
        audit.add(s, "eval_set_created", actor_id=user_id, target=f"{name} v{version}",
                  details={"items": len(rows), "left_out": len(problems), "truth": truth_source,
                           "sha256": digest})  # fmt: skip
        return row.id, True

    try:
        set_id, new = dbe.write(ctx.engine, tx)
    except IntegrityError:  # another request stored this name's next version meanwhile: number after it
        try:
            set_id, new = dbe.write(ctx.engine, tx)
        except IntegrityError as exc:
            raise EvalSetRefused(f"{name} was being changed by someone else at the same time: try again") from exc
    log.info("evaluation set %s (%d items, %d left out, new: %s)", set_id, len(rows), len(problems), new)
    return Made(get(ctx, set_id), new, problems)


def under_roots(path: Path | str, roots: tuple[Path, ...]) -> bool:
    """Whether `path`, symbolic links and .. followed, lies under one of the dataset folders."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved.is_relative_to(root) for root in roots)


def check_under_roots(folder: Path | str, csv_path: Path | str, roots: tuple[Path, ...]) -> None:
    """Refuse a folder or labels file outside the dataset folders (CXR_REVIEW_DATASET_ROOTS), before anything is
    read: a path typed in the browser must not read, or reveal the existence of, other files of the server."""
    for what, path in (("image folder", folder), ("labels CSV", csv_path)):
        if not str(path).strip():
            continue
        if not under_roots(path, roots):
            raise EvalSetRefused(
                f"the {what} must lie under a dataset folder ({', '.join(map(str, roots))}; "
                "CXR_REVIEW_DATASET_ROOTS sets them)"
            )


def from_folder(
    ctx: Context, name: str, folder: Path, csv_path: Path, user_id: int, *, confined: bool = False
) -> Made:
    """A set from a folder and its labels CSV. `confined` (the browser): only under the dataset folders."""
    if confined:
        check_under_roots(folder, csv_path, ctx.settings.dataset_roots)
    rows, findings, problems = read_folder(folder, csv_path, ctx.settings.max_upload_bytes)
    return store(
        ctx, name, "folder", "csv", rows, findings, problems, user_id, folder=str(Path(folder).resolve())
    )


def from_database(ctx: Context, name: str, f: repo.WorklistFilter, truth_source: str, user_id: int) -> Made:
    rows, findings, problems = read_database(ctx, f, truth_source)
    return store(ctx, name, "database", truth_source, rows, findings, problems, user_id)


def list_sets(ctx: Context) -> list[SetInfo]:
    """Every version of every set, newest first."""
    with dbe.read(ctx.engine) as s:
        names = accounts.names(s)
        return [_info(r, names) for r in s.scalars(select(EvalSet).order_by(EvalSet.id.desc()))]


def get(ctx: Context, set_id: int) -> SetInfo:
    with dbe.read(ctx.engine) as s:
        row = s.get(EvalSet, set_id)
        if row is None:
            raise LookupError(f"evaluation set {set_id} does not exist")
        return _info(row, accounts.names(s))


@dataclass(frozen=True)
class Item:
    id: int
    pixel_sha256: str
    labels: dict[str, bool | None]
    file_name: str | None
    image_id: int | None
    patient_sex: str | None
    patient_age_years: int | None
    view_position: str | None
    source: str | None


def items(ctx: Context, set_id: int) -> list[Item]:
    with dbe.read(ctx.engine) as s:
        rows = s.scalars(
            select(EvalSetItem).where(EvalSetItem.set_id == set_id).order_by(EvalSetItem.position)
        )
        return [
            Item(r.id, r.pixel_sha256, json.loads(r.labels), r.file_name, r.image_id, r.patient_sex,
                 r.patient_age_years, r.view_position, r.source)
            for r in rows
        ]  # fmt: skip
