"""Readers' annotations of an image: image-level findings, boxes, polygons and a label map, saved as versions that
are never overwritten. A save names the version it was edited from; when that is no longer the newest of its line
(another tab or another adjudicator saved meanwhile), the save is kept too and the caller hears "changed by X at T".
Annotators write only their own line; finals are written only by a task's adjudicator (or an admin)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
from sqlalchemy.orm import Session

from db import annotations as repo
from db import audit
from db import engine as dbe
from db.models import AnnotationStatus, AnnotationVersion, Image, LabellingTask
from services import vocabulary
from services.context import Context

MAX_BOXES = 200
MAX_POLYGON_POINTS = 5000


class Actor(Protocol):
    user_id: int
    username: str
    role: str


class AnnotationError(ValueError):
    """Content that cannot be saved, with the reason (nothing was written)."""


class NotAllowed(PermissionError):
    """The user may not write this line (nothing was written)."""


@dataclass(frozen=True)
class Saved:
    version_id: int
    conflict: str | None = None  # "changed by X at T" when the parent was not the newest version of its line


@dataclass
class Version:
    """A stored version as plain values (safe after the session closes)."""

    id: int
    image_id: int
    task_id: int | None
    reader: str
    status: str
    parent_id: int | None
    proposal_prediction_id: int | None
    conflict_with_id: int | None
    labels: dict[str, str]
    boxes: list[dict]
    polygons: list[dict]
    label_map_sha256: str | None
    note: str | None
    created_at: dt.datetime
    extra: dict = field(default_factory=dict)


def as_version(row: AnnotationVersion, reader: str) -> Version:
    return Version(
        row.id, row.image_id, row.task_id, reader, row.status.value, row.parent_id, row.proposal_prediction_id,
        row.conflict_with_id, json.loads(row.labels), json.loads(row.boxes), json.loads(row.polygons),
        row.label_map_sha256, row.note, row.created_at,
    )  # fmt: skip


# --- validation ----------------------------------------------------------------------------------------------------
def check_labels(labels: dict[str, str], allowed: set[str] | None = None) -> dict[str, str]:
    out = {}
    for name, value in labels.items():
        try:
            vocabulary.check_finding(name)
        except ValueError as exc:
            raise AnnotationError(str(exc)) from None
        if allowed is not None and name not in allowed:
            raise AnnotationError(f"{name} is not in this task's schema ({', '.join(sorted(allowed))})")
        if value not in vocabulary.LABEL_VALUES:
            raise AnnotationError(f"{name}: {value!r} is not one of {', '.join(vocabulary.LABEL_VALUES)}")
        out[name] = value
    if out.get(vocabulary.NO_FINDING) == "present" and any(
        v == "present" for k, v in out.items() if k != vocabulary.NO_FINDING
    ):
        raise AnnotationError("No Finding cannot be present together with a present finding")
    return out


def check_box(box: dict, rows: int, columns: int) -> dict:
    """A box {label, x, y, w, h} inside the image (pixels; x, y its top-left corner)."""
    try:
        label = vocabulary.check_finding(str(box["label"]))
        x, y, w, h = (float(box[k]) for k in ("x", "y", "w", "h"))
    except KeyError as exc:
        raise AnnotationError(f"a box needs label, x, y, w and h (missing {exc.args[0]})") from None
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"box: {exc}") from None
    if label == vocabulary.NO_FINDING:
        raise AnnotationError("No Finding has no place: it cannot be a box")
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise AnnotationError(f"box of {label}: width and height must be positive")
    if x < 0 or y < 0 or x + w > columns + 1e-6 or y + h > rows + 1e-6:
        raise AnnotationError(
            f"box of {label} at x={x:g}, y={y:g}, w={w:g}, h={h:g} lies outside the {columns}x{rows} image"
        )
    out = {"label": label, "x": x, "y": y, "w": w, "h": h}
    if box.get("item_id") is not None:
        out["item_id"] = int(box["item_id"])  # the AI box it was corrected from
    return out


def check_polygon(poly: dict, rows: int, columns: int) -> dict:
    label = str(poly.get("label", ""))
    if label == vocabulary.NO_FINDING:
        raise AnnotationError("No Finding has no place: it cannot be a polygon")
    if label not in vocabulary.STRUCTURES.values():
        try:
            vocabulary.check_finding(label)
        except ValueError as exc:
            raise AnnotationError(f"polygon: {exc}") from None
    pts = np.asarray(poly.get("points", []), dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or not 3 <= len(pts) <= MAX_POLYGON_POINTS:
        raise AnnotationError(f"polygon of {label}: needs 3 to {MAX_POLYGON_POINTS} [x, y] points")
    if (
        not np.isfinite(pts).all()
        or (pts < 0).any()
        or (pts[:, 0] > columns).any()
        or (pts[:, 1] > rows).any()
    ):
        raise AnnotationError(f"polygon of {label}: a point lies outside the {columns}x{rows} image")
    return {"label": label, "points": pts.round(2).tolist()}


def check_label_map(label_map: np.ndarray, rows: int, columns: int) -> np.ndarray:
    arr = np.asarray(label_map)
    if arr.shape != (rows, columns):
        raise AnnotationError(
            f"the mask is {'x'.join(map(str, arr.shape[::-1]))} but the image is {columns}x{rows}: refused"
        )
    if (
        arr.dtype.kind not in "uib"
        or arr.min(initial=0) < 0
        or arr.max(initial=0) > max(vocabulary.STRUCTURES)
    ):
        raise AnnotationError(
            f"a label map holds integers 0..{max(vocabulary.STRUCTURES)} ({vocabulary.STRUCTURES})"
        )
    return arr.astype(np.uint8)


def label_map_png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fast: a save must stay quick
    if not ok:
        raise AnnotationError("the label map could not be encoded")
    return buf.tobytes()


def load_label_map(ctx: Context, sha256: str) -> np.ndarray:
    return cv2.imdecode(np.fromfile(ctx.store.path_for(sha256), np.uint8), cv2.IMREAD_UNCHANGED)


# --- permissions ---------------------------------------------------------------------------------------------------
def _may_write(s: Session, actor: Actor, task_id: int | None, status: AnnotationStatus) -> None:
    if actor.role == "researcher":
        raise NotAllowed("researchers read annotations; they do not write them")
    readers = repo.task_readers(s, task_id) if task_id is not None else {}
    if task_id is not None and actor.role != "admin" and actor.username not in readers:
        raise NotAllowed(f"{actor.username} is not a reader of this task")
    if status == AnnotationStatus.final and actor.role != "admin":
        if task_id is None or not readers.get(actor.username, (0, False))[1]:
            raise NotAllowed("only an adjudicator of the task (or an admin) sets the final labels")


# --- saving --------------------------------------------------------------------------------------------------------
def save(ctx: Context, actor: Actor, image_id: int, **kw) -> Saved:
    """Save a new version of the actor's line of the image (or of the final line: status "final"), in its own
    transaction. See save_in."""
    return dbe.write(ctx.engine, lambda s: save_in(s, ctx, actor, image_id, **kw))


def save_in(
    s: Session,
    ctx: Context,
    actor: Actor,
    image_id: int,
    *,
    task_id: int | None = None,
    status: str = "draft",
    labels: dict[str, str] | None = None,
    boxes: list[dict] | None = None,
    polygons: list[dict] | None = None,
    label_map: np.ndarray | None = None,
    parent_id: int | None = None,
    from_newest: bool = False,
    proposal_prediction_id: int | None = None,
    note: str | None = None,
    client_address: str | None = None,
) -> Saved:
    """A new version, edited from `parent_id` (None: started afresh, from the AI's proposal or from nothing;
    from_newest: from whatever is newest in the line, as an import does). Fields left None are the parent's.
    When the newest version of the line is not the parent, both are kept and Saved.conflict says who changed
    it when. Raises AnnotationError / NotAllowed before anything is written."""
    status_ = AnnotationStatus(status)
    image = s.get(Image, image_id)
    if image is None:
        raise AnnotationError(f"image {image_id} is not stored")
    _may_write(s, actor, task_id, status_)
    newest = repo.head(s, image_id, task_id, None if status_ == AnnotationStatus.final else actor.user_id)
    if from_newest:
        parent_id = newest.id if newest is not None else None
    parent = s.get(AnnotationVersion, parent_id) if parent_id is not None else None
    if parent_id is not None and (parent is None or parent.image_id != image_id):
        raise AnnotationError(f"version {parent_id} is not a version of this image")
    fields = _content(ctx, image, _schema(s, task_id), parent, labels, boxes, polygons, label_map)
    conflict = None
    if newest is not None and (parent is None or newest.id != parent.id):
        who = repo.user_names(s, [newest.reader_id]).get(newest.reader_id, "?")
        conflict = f"changed by {who} at {newest.created_at.astimezone():%Y-%m-%d %H:%M:%S %Z}"
    row = repo.add_version(
        s, image_id=image_id, task_id=task_id, reader_id=actor.user_id, status=status_, parent_id=parent_id,
        proposal_prediction_id=proposal_prediction_id or (parent.proposal_prediction_id if parent is not None else None),
        conflict_with_id=newest.id if conflict else None, note=note, **fields,
    )  # fmt: skip
    audit.add(
        s, "annotation_saved", actor_id=actor.user_id, target=f"image {image_id}", client_address=client_address,
        details={"version": row.id, "task": task_id, "status": status_.value, "parent": parent_id,
                 "conflict_with": row.conflict_with_id},
    )  # fmt: skip
    return Saved(row.id, conflict)


def _schema(s: Session, task_id: int | None) -> dict | None:
    if task_id is None:
        return None
    task = s.get(LabellingTask, task_id)
    if task is None:
        raise AnnotationError(f"task {task_id} does not exist")
    return json.loads(task.schema)


def _content(ctx, image: Image, schema, base, labels, boxes, polygons, label_map) -> dict:
    allowed = set(schema["findings"]) | {vocabulary.NO_FINDING} if schema else None
    out = {
        "labels": json.dumps(check_labels(labels, allowed))
        if labels is not None
        else base.labels
        if base
        else "{}",
        "boxes": base.boxes if base else "[]",
        "polygons": base.polygons if base else "[]",
        "label_map_sha256": base.label_map_sha256 if base else None,
    }
    if boxes is not None:
        if len(boxes) > MAX_BOXES:
            raise AnnotationError(f"{len(boxes)} boxes: at most {MAX_BOXES} per image")
        out["boxes"] = json.dumps([check_box(b, image.rows, image.columns) for b in boxes])
    if polygons is not None:
        out["polygons"] = json.dumps([check_polygon(p, image.rows, image.columns) for p in polygons])
    if label_map is not None:
        arr = check_label_map(label_map, image.rows, image.columns)
        # an empty map is kept too: "nothing here" is a reading (a reader who erased the lungs disagrees)
        out["label_map_sha256"] = ctx.store.put_bytes(label_map_png(arr))
    return out


# --- reading -------------------------------------------------------------------------------------------------------
def head(ctx: Context, image_id: int, task_id: int | None, reader_id: int | None) -> Version | None:
    """The newest version of a reader's line (reader_id None: the final)."""
    with dbe.read(ctx.engine) as s:
        row = repo.head(s, image_id, task_id, reader_id)
        return None if row is None else as_version(row, repo.user_names(s, [row.reader_id])[row.reader_id])


def history(ctx: Context, image_id: int, task_id: int | None, reader_id: int | None) -> list[Version]:
    with dbe.read(ctx.engine) as s:
        rows = repo.history(s, image_id, task_id, reader_id)
        names = repo.user_names(s, {r.reader_id for r in rows})
        return [as_version(r, names[r.reader_id]) for r in rows]


def heads(ctx: Context, task_id: int | None, image_ids=None) -> list[Version]:
    """The newest version of every line of a task: readers' work and finals."""
    with dbe.read(ctx.engine) as s:
        rows = repo.heads(s, task_id, image_ids)
        names = repo.user_names(s, {r.reader_id for r in rows})
        return [as_version(r, names[r.reader_id]) for r in rows]


# --- helpers of the annotation screen ------------------------------------------------------------------------------
def decode_mask(data_url: str, rows: int, columns: int) -> np.ndarray:
    """The label map a browser sent as a PNG data URL (grey values 0..3 in RGBA), checked against the image."""
    import base64

    try:
        raw = base64.b64decode(data_url.split(",", 1)[1], validate=True)
    except (IndexError, ValueError):
        raise AnnotationError("the mask sent is not a PNG data URL") from None
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        raise AnnotationError("the mask sent is not a PNG")
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    if (height, width) != (rows, columns):  # before decoding: a huge PNG costs nothing to refuse
        raise AnnotationError(f"the mask is {width}x{height} but the image is {columns}x{rows}: refused")
    arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise AnnotationError("the mask sent is not a readable PNG")
    return check_label_map(arr[..., 0] if arr.ndim == 3 else arr, rows, columns)


@dataclass(frozen=True)
class AIReading:
    """What the AI says of a stored image: every finding at the operating point in force ("No Finding" never
    present beside a finding), the boxes of the findings it calls present (with the finding's probability and
    the stored item each came from), the anatomy label map, the models ({task: provenance}) and the
    classifier's stored prediction."""

    labels: dict[str, str]
    boxes: list[dict]
    label_map: np.ndarray | None
    models: dict[str, dict]
    prediction_id: int | None
    gate: dict | None = None  # the quality gate's verdict; refused: nothing above (no statement, no model)


def ai_reading(ctx: Context, runner, image: dict) -> AIReading:
    """The AI's statements on a stored image (the models run now where their results are not stored). `image`:
    the row's id, pixel_sha256 and file_sha256."""
    from services import analysis  # runs models: only where the AI's reading is asked for

    result = analysis.analyse(ctx, runner, image)
    labels, boxes, lm, models = {}, [], None, {}
    if (f := result.findings) is not None:
        models["classification"] = f["model"]
        thr = result.thresholds or f.get("default_thresholds", {})
        for label, p in f["probabilities"].items():
            labels[label] = "present" if p >= thr.get(label, 0.5) else "absent"
            if labels[label] == "present":
                boxes += [
                    {"label": label, **{k: b[k] for k in ("x", "y", "w", "h")}, "score": p,
                     "item_id": result.item_id("classification", "box", f"{label}#{i}")}
                    for i, b in enumerate(f["boxes"].get(label, []))
                ]  # fmt: skip
        found = any(v == "present" for k, v in labels.items() if k != vocabulary.NO_FINDING)
        if found:
            labels[vocabulary.NO_FINDING] = "absent"
        elif vocabulary.NO_FINDING not in f["probabilities"]:  # a multi-label version: no finding flagged says it
            labels[vocabulary.NO_FINDING] = "present"
    if (a := result.anatomy) is not None:
        models["segmentation"] = a["model"]
        lm = analysis.label_map(ctx, a)
    return AIReading(labels, boxes, lm, models, result.prediction_ids.get("classification"), result.gate)


def ai_proposal(ctx: Context, runner, image: dict, findings: tuple[str, ...], structures: tuple[str, ...]):
    """The AI's reading as a reader's starting point, limited to a task's schema: (labels, boxes, label map,
    the prediction it came from)."""
    ai = ai_reading(ctx, runner, image)
    boxes = [{k: v for k, v in b.items() if k != "score"} for b in ai.boxes if b["label"] in findings]
    lm = ai.label_map
    if lm is not None:
        keep = [v for v, name in vocabulary.STRUCTURES.items() if name in structures]
        lm = np.where(np.isin(lm, keep), lm, 0).astype(np.uint8)
    return {k: v for k, v in ai.labels.items() if k in findings}, boxes, lm, ai.prediction_id


def on_image(ctx: Context, image_id: int) -> list[Version]:
    """The newest version of every line of an image, in every task (readers' work and finals), oldest first."""
    with dbe.read(ctx.engine) as s:
        rows = [v for t in repo.task_ids_of_image(s, image_id) for v in repo.heads(s, t, [image_id])]
        names = repo.user_names(s, {r.reader_id for r in rows})
        tasks = repo.task_names(s, {r.task_id for r in rows if r.task_id is not None})
        out = []
        for r in sorted(rows, key=lambda r: r.id):
            v = as_version(r, names[r.reader_id])
            v.extra["task"] = tasks.get(r.task_id, "")
            out.append(v)
        return out


def ai_scores(ctx: Context, pixel_sha256: str) -> tuple[str, dict[str, float]] | None:
    """The newest stored classifier result of an image's pixels: ("model@version", {finding: probability})."""
    with dbe.read(ctx.engine) as s:
        preds = repo.predictions_of(s, pixel_sha256, "classification")
        if not preds:
            return None
        return f"{preds[-1].model_id}@{preds[-1].model_version}", json.loads(preds[-1].result)["probabilities"]
