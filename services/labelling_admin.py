"""What the Labelling tasks page (admins and researchers) does beside services.labelling: the images of a new task
from a worklist filter or from an uploaded list of image names, who may read, the agreement report as tables,
an export of a task's labels as one zip (the files exports.write made, and a manifest of each image's status),
and readers' annotations imported from an uploaded file. No Streamlit here: the page renders what this returns."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from db import accounts
from db import annotations as ann_repo
from db import engine as dbe
from db import repo as db_repo
from db.models import AnnotationVersion
from services import agreement_report, annotation_import, dicom_objects, exports, labelling
from services.context import Context

READER_ROLES = ("annotator", "radiologist", "admin")  # researchers read annotations; they do not label
# A column of an uploaded list that holds the image names (compared in lower case); else its first column.
NAME_COLUMNS = (
    "image",
    "image index",
    "sop_instance_uid",
    "pixel_sha256",
    "file",
    "file_name",
    "filename",
    "name",
)
MAX_LIST_BYTES = 5 * 2**20
MAX_NAMES_SHOWN = 20
FORMATS = {"csv": "CSV", "coco": "COCO JSON", "seg": "DICOM SEG", "sr": "DICOM SR"}
NOT_DEFINED = "not defined"
ALL_SAME = "every reader gave every image the same rating: no chance correction is possible"


class UnknownImages(labelling.TaskError):
    """Names in an uploaded list that name no stored image (nothing was made)."""

    def __init__(self, missing: list[str], total: int):
        shown = ", ".join(missing[:MAX_NAMES_SHOWN])
        more = f" and {len(missing) - MAX_NAMES_SHOWN} more" if len(missing) > MAX_NAMES_SHOWN else ""
        super().__init__(
            f"{len(missing)} of the {total} image names are not stored: {shown}{more}. No task was made"
        )
        self.missing = missing


# --- a new task ------------------------------------------------------------------------------------------------
def reader_candidates(ctx: Context) -> dict[str, str]:
    """{user name: role} of the active accounts that may read a task (annotators, radiologists, admins)."""
    with dbe.read(ctx.engine) as s:
        return {
            u.username: u.role.value
            for u in accounts.list_users(s)
            if u.is_active and u.role.value in READER_ROLES
        }


def images_matching(ctx: Context, flt: db_repo.WorklistFilter) -> list[int]:
    """Every image of the studies the worklist filter matches."""
    with dbe.read(ctx.engine) as s:
        return db_repo.image_ids(s, flt)


def names_in(data: bytes) -> list[str]:
    """Image names from an uploaded list: plain text with one name a line, or a CSV whose column `image` (or
    `sop_instance_uid`, `pixel_sha256`, `file`, NIH's `Image Index`) holds them, else its first column. Blank
    lines are left out; a name listed twice counts once."""
    if len(data) > MAX_LIST_BYTES:
        raise labelling.TaskError(
            f"the list is {len(data) / 2**20:.1f} MB, over {MAX_LIST_BYTES // 2**20} MB"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise labelling.TaskError(f"the list is not UTF-8 text (byte {exc.start})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    column = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    if column is None:
        column = 0
    else:
        rows = rows[1:]
    names = [r[column].strip() for r in rows if len(r) > column and r[column].strip()]
    if not names:
        raise labelling.TaskError("the list names no images")
    return list(dict.fromkeys(names))


def images_named(ctx: Context, names: list[str]) -> list[int]:
    """The ids of the images named (SOP Instance UID, pixel sha256 or imported file name), in the list's order;
    UnknownImages naming every name that matches no stored image."""
    with dbe.read(ctx.engine) as s:
        found = {}
        for name in names:
            image = ann_repo.image_ref(s, name)
            found[name] = None if image is None else image.id
    if missing := [n for n, i in found.items() if i is None]:
        raise UnknownImages(missing, len(names))
    return list(dict.fromkeys(found.values()))


# --- progress and agreement ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRow:
    task: labelling.Task
    progress: labelling.Progress


def overview(ctx: Context) -> list[TaskRow]:
    """Every task with its progress (newest first)."""
    tasks = sorted(labelling.all_tasks(ctx), key=lambda t: -t.id)
    return [TaskRow(t, labelling.progress(ctx, t.id)) for t in tasks]


def submitted_counts(ctx: Context, task_id: int) -> dict[str, int]:
    """{reader: images whose newest version of theirs is submitted}: what agreement compares."""
    return {r: len(v) for r, v in sorted(agreement_report.submitted_by_reader(ctx, task_id).items())}


def annotations_stamp(ctx: Context, task_id: int) -> tuple[int, int]:
    """(versions, newest version id) of a task: changes whenever anything in it is saved (a cache key)."""
    with dbe.read(ctx.engine) as s:
        n, newest = s.execute(
            select(func.count(AnnotationVersion.id), func.max(AnnotationVersion.id)).where(
                AnnotationVersion.task_id == task_id
            )
        ).one()
    return n, newest or 0


def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def agreement_tables(report: dict) -> dict[str, list[dict]]:
    """The agreement report as rows to show: kappa per finding, box F1 per pair of readers, Dice and HD95 per
    structure and pair, and the images with the most disagreement."""
    kappa = []
    for finding, k in report["findings"].items():
        note = ""
        if k["kappa"] is None:
            note = ALL_SAME
        elif k["ci95"] is None:
            note = "no interval from a single image" if k["n_images"] == 1 else "no interval"
        kappa.append({
            "Finding": finding,
            "Kappa": NOT_DEFINED if k["kappa"] is None else _num(k["kappa"]),
            "95% interval": f"{k['ci95'][0]:.3f} to {k['ci95'][1]:.3f}" if k["ci95"] else "",
            "Agreement": f"{100 * k['percent_agreement']:.0f}%", "Images": k["n_images"], "Note": note,
        })  # fmt: skip
    boxes = []
    for pair, b in report["boxes"]["pairs"].items():
        a, c = pair.split("|")
        boxes.append({
            "Readers": f"{a} / {c}", "F1": "no boxes" if b["f1"] is None else _num(b["f1"]),
            "Matched": b["matched"], "Boxes (first)": b[f"boxes_{a}"], "Boxes (second)": b[f"boxes_{c}"],
            "Images": b["n_images"],
        })  # fmt: skip
    masks = [
        {"Structure": structure, "Readers": " / ".join(pair.split("|")), "Dice": _num(m["dice_mean"]),
         "HD95 (px)": _num(m["hd95_mean_px"], 1), "Images": m["n_images"]}
        for structure, pairs in report["masks"].items() for pair, m in pairs.items()
    ]  # fmt: skip
    worst = [
        {"Image": w["file"], "Image id": w["image_id"], "Disagree on": ", ".join(w["disagree_on"])}
        for w in report["most_disagreement"]
    ]
    return {"kappa": kappa, "boxes": boxes, "masks": masks, "most_disagreement": worst}


# --- downloads -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    file_name: str
    data: bytes  # the zip
    results: list[dict]  # per image: image_id, file, status (exported | skipped), files, reason


def source_label(source: str) -> str:
    if source == "final":
        return "final labels (adjudicated)"
    if source == "ai":
        return "AI"
    return f"reader {source.removeprefix('reader:')}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "task"


def export_zip(
    ctx: Context,
    task: labelling.Task,
    fmt: str,
    source: str,
    actor_id: int,
    runner=None,
    progress: Callable[[int, int], None] | None = None,
) -> Bundle:
    """The task's labels from `source` (final, reader:NAME or ai) written by exports.write (which audits it) into
    a temporary folder, zipped with manifest.json. Source ai analyses the images not analysed yet first (progress
    after each image). ExportError when there is nothing to export."""
    if fmt not in FORMATS:
        raise exports.ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if source == "ai" and runner is None:
        raise exports.ExportError("the AI source needs the models")
    items = exports.gather(ctx, source, task.id, [], runner, progress)
    if not items:
        raise exports.ExportError(f"nothing to export: task {task.name} has no {source_label(source)} yet")
    made = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="cxr-export-") as tmp:
        out = Path(tmp) / "export"
        results = [r.as_json() for r in exports.write(ctx, fmt, items, out, actor_id=actor_id, source=source)]
        manifest = {
            "task": task.name, "format": fmt, "source": source, "made_at_utc": made.isoformat(timespec="seconds"),
            "research_use": dicom_objects.RESEARCH_USE,
            "exported": sum(r["status"] == "exported" for r in results),
            "skipped": sum(r["status"] != "exported" for r in results), "images": results,
        }  # fmt: skip
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(out.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    z.write(f, f.name)
            z.writestr("manifest.json", json.dumps(manifest, indent=1))
    name = f"{_slug(task.name)}-{fmt}-{_slug(source)}-{made:%Y%m%d-%H%M%S}.zip"
    return Bundle(name, buf.getvalue(), results)


# --- import ----------------------------------------------------------------------------------------------------
def import_upload(
    ctx: Context, file_name: str, data: bytes, reader: str, task: str | None, uploaded_by: int | None = None
) -> list[annotation_import.RowResult]:
    """An uploaded CSV or COCO JSON file imported as `reader`'s submitted annotations (of `task`): one result per
    row or annotation; one transaction per file. ImportFileError when the file itself is unusable."""
    reader = reader.strip()
    if not reader:
        raise annotation_import.ImportFileError("name the reader the annotations belong to")
    base = Path(file_name).name
    if base in ("", ".", ".."):
        base = "upload.csv"
    with tempfile.TemporaryDirectory(prefix="cxr-annotations-") as tmp:
        path = Path(tmp) / base
        path.write_bytes(data)
        return annotation_import.import_file(ctx, path, reader, task, uploaded_by=uploaded_by)
