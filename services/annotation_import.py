"""Annotations from files: an NIH-style CSV (`image`, `Finding Labels`: `|`-separated findings or "No Finding") or a
COCO JSON file (boxes and polygons). Each row or annotation gets a result; a file is applied in one transaction,
so one bad row applies nothing of that file. Images are named by SOP Instance UID, pixel sha256 or the name of
the file they were imported from. Each image becomes one submitted version of the reader's line."""

from __future__ import annotations

import csv
import io
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from db import accounts, audit
from db import annotations as repo
from db import engine as dbe
from db.models import Role
from services import annotations, auth, vocabulary
from services.auth import SignedIn
from services.context import Context

IMAGE_COLUMNS = ("image", "Image Index")  # ours, and NIH's labels.csv
# NIH's labels.csv carries these as well: read past, not refused.
NIH_COLUMNS = {
    "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
    "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
}  # fmt: skip
MAX_FILE_BYTES = 200 * 2**20


class ImportFileError(ValueError):
    """The file as a whole cannot be read (format, columns); nothing was applied."""


@dataclass
class RowResult:
    where: str  # "row 3" or "annotation 17"
    image: str | None
    status: str = "applied"  # applied | rejected
    reason: str | None = None

    def as_json(self) -> dict:
        return {"where": self.where, "image": self.image, "status": self.status, "reason": self.reason}


@dataclass
class _Item:
    result: RowResult
    labels: dict[str, str] = field(default_factory=dict)
    boxes: list[dict] = field(default_factory=list)
    polygons: list[dict] = field(default_factory=list)


def reader_account(ctx: Context, name: str) -> SignedIn:
    """The reader by name, created as an annotator (with an unusable one-time password: an admin resets it to
    let them sign in) when new."""

    def found():
        with dbe.read(ctx.engine) as s:
            u = accounts.get_user_by_name(s, name)
            return None if u is None else SignedIn(u.id, u.username, u.role.value, u.must_change_password)

    if (user := found()) is None:
        auth.add_user(ctx.engine, name, Role.annotator.value, secrets.token_urlsafe(24), one_time=True)
        user = found()
    if user.role == Role.researcher.value:
        raise ImportFileError(f"{name} is a researcher: researchers do not label")
    return user


def import_file(
    ctx: Context, path: Path, reader: str, task: str | None = None, uploaded_by: int | None = None
) -> list[RowResult]:
    """Read, check and apply one file as `reader`'s submitted versions; raises ImportFileError when the file
    itself is unusable. `uploaded_by`: the admin who imported it for the reader (the audit names both)."""
    path = Path(path)
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImportFileError(
            f"{path.name}: {path.stat().st_size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path.name}: not UTF-8 text (byte {exc.start})") from None
    is_json = path.suffix.lower() == ".json" or text.lstrip().startswith("{")
    items = _coco(text) if is_json else _csv(text)
    if task is not None:  # a new account could never be a reader of the task: say so before making one
        with dbe.read(ctx.engine) as s:
            if (row := repo.task_by_name(s, task)) is None:
                raise ImportFileError(f"no labelling task named {task!r}")
            if reader not in repo.task_readers(s, row.id):
                raise ImportFileError(f"{reader} is not a reader of task {task!r}: add them to the task first")
    actor = reader_account(ctx, reader)

    def tx(s: Session) -> list[RowResult]:
        task_id, in_task, schema = None, None, None
        if task is not None:
            row = repo.task_by_name(s, task)
            task_id, in_task = row.id, set(repo.task_images(s, row.id))
            schema = set(json.loads(row.schema)["findings"]) | {vocabulary.NO_FINDING}
        by_image: dict[int, list[_Item]] = {}
        for item in items:
            if item.result.status == "applied":
                _resolve(s, item, by_image, in_task)
            if schema is not None:  # a task labels only its schema's findings
                item.labels = {k: v for k, v in item.labels.items() if k in schema}
        for image_id, parts in by_image.items():
            labels = {k: v for p in parts for k, v in p.labels.items()}
            for p in parts:  # a box says its finding is present, whatever the row said
                for b in p.boxes:
                    labels[b["label"]] = "present"
            boxes = [b for p in parts for b in p.boxes]
            polygons = [q for p in parts for q in p.polygons]
            try:
                annotations.save_in(
                    s, ctx, actor, image_id, task_id=task_id, status="submitted", from_newest=True,
                    labels=labels or None, boxes=boxes if boxes or not is_json else None,
                    polygons=polygons or None, note=f"imported from {path.name}",
                )  # fmt: skip
            except (annotations.AnnotationError, annotations.NotAllowed) as exc:
                for p in parts:
                    p.result.status, p.result.reason = "rejected", str(exc)
        results = [i.result for i in items]
        if any(r.status == "rejected" for r in results):
            s.rollback()  # one transaction per file: nothing of it is applied
            for r in results:
                if r.status == "applied":
                    r.status, r.reason = "rejected", "not applied: another row of this file was rejected"
            return results
        audit.add(s, "annotations_imported", actor_id=uploaded_by or actor.user_id, target=path.name[:200],
                  details={"rows": len(results), "images": len(by_image), "task": task_id,
                           "reader": actor.user_id})  # fmt: skip
        return results

    return dbe.write(ctx.engine, tx)


def _resolve(s: Session, item: _Item, by_image: dict[int, list[_Item]], in_task: set[int] | None) -> None:
    image = repo.image_ref(s, item.result.image or "")
    if image is None:
        item.result.status, item.result.reason = "rejected", f"image {item.result.image!r} is not stored"
        return
    if in_task is not None and image.id not in in_task:
        item.result.status, item.result.reason = "rejected", f"image {item.result.image!r} is not in this task"
        return
    try:
        item.boxes = [annotations.check_box(b, image.rows, image.columns) for b in item.boxes]
        item.polygons = [annotations.check_polygon(p, image.rows, image.columns) for p in item.polygons]
    except annotations.AnnotationError as exc:
        item.result.status, item.result.reason = "rejected", str(exc)
        return
    by_image.setdefault(image.id, []).append(item)


def _csv(text: str) -> list[_Item]:
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_col is None or "Finding Labels" not in columns:
        raise ImportFileError(
            f"a labels CSV needs the columns `image` and `Finding Labels`; this one has: {', '.join(columns) or 'none'}"
        )
    if unknown := [c for c in columns if c not in (image_col, "Finding Labels", *NIH_COLUMNS)]:
        raise ImportFileError(
            f"unknown column(s) {', '.join(unknown)}: only `image` and `Finding Labels` are read"
        )
    items = []
    for n, row in enumerate(reader, start=2):  # line 1 is the header
        item = _Item(RowResult(f"row {n}", (row.get(image_col) or "").strip() or None))
        items.append(item)
        found = [f.strip() for f in (row.get("Finding Labels") or "").split("|") if f.strip()]
        try:
            found = [vocabulary.check_finding(f) for f in found]
        except ValueError as exc:
            item.result.status, item.result.reason = "rejected", str(exc)
            continue
        if not item.result.image:
            item.result.status, item.result.reason = "rejected", "no image named"
        elif not found:
            item.result.status, item.result.reason = "rejected", "empty `Finding Labels` (write No Finding)"
        elif vocabulary.NO_FINDING in found and len(found) > 1:
            item.result.status, item.result.reason = "rejected", "No Finding together with a finding"
        else:  # the findings listed are present, the others absent
            item.labels = {f: "present" if f in found else "absent" for f in vocabulary.FINDINGS}
            item.labels[vocabulary.NO_FINDING] = "present" if found == [vocabulary.NO_FINDING] else "absent"
    return items


def _coco(text: str) -> list[_Item]:
    try:
        doc = json.loads(text)
        images = {int(i["id"]): str(i["file_name"]) for i in doc["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        anns = list(doc["annotations"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ImportFileError(
            f"not a COCO file: it needs images[].id/file_name, categories[].id/name and annotations[] ({type(exc).__name__}: {exc})"
        ) from None
    structures = set(vocabulary.STRUCTURES.values())
    items = []
    for n, a in enumerate(anns, start=1):
        item = _Item(RowResult(f"annotation {a.get('id', n)}", images.get(a.get("image_id"))))
        items.append(item)
        name = categories.get(a.get("category_id"))
        if item.result.image is None:
            item.result.status, item.result.reason = (
                "rejected",
                f"image_id {a.get('image_id')!r} is not in images[]",
            )
        elif name is None:
            item.result.status, item.result.reason = (
                "rejected",
                f"unknown category_id {a.get('category_id')!r}",
            )
        elif name not in vocabulary.FINDINGS and name not in structures:
            item.result.status, item.result.reason = (
                "rejected", f"unknown category {name!r} (a finding: {', '.join(vocabulary.FINDINGS)}; or {', '.join(sorted(structures))})",
            )  # fmt: skip
        else:
            if bbox := a.get("bbox"):
                if not isinstance(bbox, list) or len(bbox) != 4:
                    item.result.status, item.result.reason = "rejected", "bbox must be [x, y, w, h]"
                    continue
                if name in structures:
                    item.result.status, item.result.reason = (
                        "rejected",
                        f"{name} is a structure: outline it with a polygon",
                    )
                    continue
                item.boxes.append(dict(zip(("x", "y", "w", "h"), bbox, strict=True), label=name))
            for flat in a.get("segmentation") or []:
                if isinstance(flat, list):
                    item.polygons.append(
                        {"label": name, "points": [flat[i : i + 2] for i in range(0, len(flat) - 1, 2)]}
                    )
    return items
