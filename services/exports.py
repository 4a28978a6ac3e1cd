"""Labels out of the app: CSV (one row per image and reader), COCO (boxes and polygons), DICOM SEG and DICOM SR
(highdicom). The source is a task's finals, one reader's newest submitted versions, or the AI (images not yet
analysed are analysed first). An image that cannot be exported (its stored file is missing, nothing to write)
is reported with the reason; the others are exported."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import select

from db import audit
from db import engine as dbe
from db.models import Image, Study
from services import annotations, dicom_objects, vocabulary
from services.context import Context
from services.store import write_atomic
from viewer import dicom_io, windowing

log = logging.getLogger(__name__)
FORMATS = ("csv", "coco", "seg", "sr")
OUT_MODE = 0o644  # a folder the user chose, for sharing (the image store is private)


class ExportError(ValueError):
    pass


@dataclass
class Exported:
    image_id: int
    file: str  # the name it was imported from
    status: str  # exported | skipped
    files: list[str]
    reason: str | None = None

    def as_json(self) -> dict:
        return {"image_id": self.image_id, "file": self.file, "status": self.status, "files": self.files,
                "reason": self.reason}  # fmt: skip


@dataclass
class Item:
    image: dict  # the image row's fields, with its study's
    readings: list[dicom_objects.Reading]
    skipped: str | None = None  # why nothing of this image is exported (the AI could not read its file, or
    # the quality gate refused it)


def _image_dict(image: Image, study: Study) -> dict:
    return {
        "id": image.id, "file_sha256": image.file_sha256, "pixel_sha256": image.pixel_sha256,
        "original_filename": image.original_filename, "rows": image.rows, "columns": image.columns,
        "source_format": image.source_format, "sop_instance_uid": image.sop_instance_uid,
        "spacing": (image.pixel_spacing_row_mm, image.pixel_spacing_col_mm) if image.pixel_spacing_row_mm else None,
        "study": {
            "study_instance_uid": study.study_instance_uid, "patient_id": study.patient_id,
            "patient_name": study.patient_name, "patient_sex": study.patient_sex, "study_date": study.study_date,
        },
    }  # fmt: skip


def _images(ctx: Context, image_ids: list[int] | None, study_uids: list[str]) -> list[dict]:
    with dbe.read(ctx.engine) as s:
        q = s.query(Image, Study).join(Study, Image.study_id == Study.id)
        if image_ids is not None:
            q = q.filter(Image.id.in_(image_ids))
        if study_uids:
            stored = set(s.scalars(select(Study.study_instance_uid).where(Study.study_instance_uid.in_(study_uids))))
            if missing := set(study_uids) - stored:
                raise ExportError(f"study {sorted(missing)[0]} is not stored")
            q = q.filter(Study.study_instance_uid.in_(study_uids))
        return [_image_dict(i, st) for i, st in q.order_by(Image.id)]


def gather(ctx: Context, source: str, task_id: int | None, study_uids: list[str], runner=None,
           progress: Callable[[int, int], None] | None = None) -> list[Item]:  # fmt: skip
    """The readings to export per image, from `final`, `reader:NAME` or `ai`."""
    if source == "ai":
        images = _images(ctx, _task_images(ctx, task_id), study_uids)
        return [_ai_item(ctx, runner, img) for img in _with_progress(images, progress)]
    if source == "final":
        versions = [v for v in annotations.heads(ctx, task_id) if v.status == "final"]
    elif source.startswith("reader:"):
        name = source.removeprefix("reader:")
        versions = [
            v for v in annotations.heads(ctx, task_id) if v.status == "submitted" and v.reader == name
        ]
    else:
        raise ExportError(f"unknown source {source!r}: final, reader:NAME or ai")
    by_image: dict[int, list] = {}
    for v in versions:
        by_image.setdefault(v.image_id, []).append(v)
    images = _images(ctx, list(by_image), study_uids)
    out = []
    for img in images:
        out.append(Item(img, [
            dicom_objects.Reading(
                observer=v.reader, labels=v.labels, boxes=v.boxes, polygons=v.polygons,
                label_map=annotations.load_label_map(ctx, v.label_map_sha256) if v.label_map_sha256 else None,
                version_id=v.id, status=v.status, saved_at=v.created_at.isoformat(timespec="seconds"),
            )
            for v in by_image[img["id"]]
        ]))  # fmt: skip
    return out


def _with_progress(images, progress):
    for n, img in enumerate(images, start=1):
        yield img
        if progress:
            progress(n, len(images))


def _task_images(ctx: Context, task_id: int | None) -> list[int] | None:
    if task_id is None:
        return None
    from db import annotations as repo

    with dbe.read(ctx.engine) as s:
        return repo.task_images(s, task_id)


def _ai_item(ctx: Context, runner, img: dict) -> Item:
    """The AI's reading of one image; an image whose stored file is missing or unreadable is skipped with the
    reason (the other images are still analysed and exported)."""
    try:
        ai = annotations.ai_reading(ctx, runner, img)
    except (dicom_io.ImageRejected, OSError) as exc:
        if not ctx.store.path_for(img["file_sha256"]).exists():
            return Item(img, [], skipped="its stored file is missing from the image store")
        return Item(img, [], skipped=f"its stored file cannot be read ({type(exc).__name__})")
    if ai.gate and ai.gate["passed"] is False:
        return Item(img, [], skipped="refused by the quality gate: " + "; ".join(ai.gate["reasons"]))
    return Item(img, [_ai_reading(ai)])


def _ai_reading(ai: annotations.AIReading) -> dicom_objects.Reading:
    """The AI's statements on an image as a reading, with the models that made them."""
    observer = ai.models["classification"]["id"] if "classification" in ai.models else "AI"
    return dicom_objects.Reading(observer=observer, labels=ai.labels, boxes=ai.boxes, label_map=ai.label_map,
                                 models=ai.models)  # fmt: skip


# --- writers -------------------------------------------------------------------------------------------------------
def write(ctx: Context, fmt: str, items: list[Item], out_dir: Path, actor_id: int | None = None,
          source: str = "final") -> list[Exported]:  # fmt: skip
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = [Exported(i.image["id"], i.image["original_filename"], "skipped", [], i.skipped)
               for i in items if i.skipped]  # fmt: skip
    items = [i for i in items if not i.skipped]
    if fmt == "csv":
        results = _write_csv(items, out_dir)
    elif fmt == "coco":
        results = _write_coco(items, out_dir)
    else:
        results = [_write_dicom(ctx, fmt, item, out_dir) for item in items]
    results = sorted(results + skipped, key=lambda r: r.image_id)
    dbe.write(ctx.engine, lambda s: audit.add(
        s, "export", actor_id=actor_id, target=f"annotations {fmt}",
        details={"format": fmt, "source": source.split(":")[0], "images": sum(r.status == "exported" for r in results)},
    ))  # fmt: skip
    return results


def _stem(img: dict) -> str:
    return f"{img['id']:06d}_{Path(img['original_filename']).stem}"[:120]


def _write_csv(items: list[Item], out_dir: Path) -> list[Exported]:
    names = [*vocabulary.FINDINGS, vocabulary.NO_FINDING]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "sop_instance_uid", "pixel_sha256", "reader", "version", "status", "saved_at_utc", "model",
                "weights_sha256", "boxes", *names])  # fmt: skip
    for item in items:
        for r in item.readings:
            model = r.models.get("classification")
            w.writerow([
                item.image["original_filename"], item.image["sop_instance_uid"] or "", item.image["pixel_sha256"],
                r.observer, r.version_id or "", r.status or "", r.saved_at or "",
                f"{model['id']}@{model['version']}" if model else "", model["weights_sha256"] if model else "",
                len(r.boxes), *(r.labels.get(n, "") for n in names),
            ])  # fmt: skip
    write_atomic(out_dir / "labels.csv", buf.getvalue().encode(), mode=OUT_MODE)
    return [Exported(i.image["id"], i.image["original_filename"], "exported", ["labels.csv"]) for i in items]


def _write_coco(items: list[Item], out_dir: Path) -> list[Exported]:
    cats = list(vocabulary.FINDINGS) + list(vocabulary.STRUCTURES.values())
    cat_id = {n: i for i, n in enumerate(cats, start=1)}
    doc = {
        "info": {"description": "CXR Review annotations", "research_use": dicom_objects.RESEARCH_USE},
        "images": [], "annotations": [],
        "categories": [{"id": cat_id[n], "name": n, "supercategory": "finding" if n in vocabulary.FINDINGS else "anatomy"} for n in cats],
    }  # fmt: skip
    models = {}
    for item in items:
        img = item.image
        doc["images"].append({"id": img["id"], "file_name": img["original_filename"], "width": img["columns"],
                              "height": img["rows"], "sop_instance_uid": img["sop_instance_uid"]})  # fmt: skip
        for r in item.readings:
            models |= {f"{m['id']}@{m['version']}": m["weights_sha256"] for m in r.models.values()}
            for b in r.boxes:
                ann = {"id": len(doc["annotations"]) + 1, "image_id": img["id"], "category_id": cat_id[b["label"]],
                       "bbox": [b["x"], b["y"], b["w"], b["h"]], "area": b["w"] * b["h"], "iscrowd": 0,
                       "segmentation": [], "reader": r.observer}  # fmt: skip
                if b.get("score") is not None:
                    ann["score"] = b["score"]
                doc["annotations"].append(ann)
            for p in r.polygons:
                pts = np.asarray(p["points"], float)
                x0, y0 = pts.min(axis=0)
                w, h = pts.max(axis=0) - (x0, y0)
                doc["annotations"].append({
                    "id": len(doc["annotations"]) + 1, "image_id": img["id"], "category_id": cat_id[p["label"]],
                    "bbox": [float(x0), float(y0), float(w), float(h)], "iscrowd": 0, "reader": r.observer,
                    "segmentation": [pts.ravel().round(2).tolist()], "area": _polygon_area(pts),
                })  # fmt: skip
    if models:
        doc["info"]["models"] = [{"model": k, "weights_sha256": v} for k, v in sorted(models.items())]
    write_atomic(
        out_dir / "annotations.coco.json", json.dumps(doc, indent=1, default=str).encode(), mode=OUT_MODE
    )
    return [
        Exported(i.image["id"], i.image["original_filename"], "exported", ["annotations.coco.json"])
        for i in items
    ]


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _write_dicom(ctx: Context, fmt: str, item: Item, out_dir: Path) -> Exported:
    img = item.image
    result = Exported(img["id"], img["original_filename"], "exported", [])
    objects, reason = dicom_datasets(ctx, fmt, item)
    if reason:
        result.status, result.reason = "skipped", reason
        return result
    suffixes = [""] if len(item.readings) == 1 else [f".{n + 1}" for n in range(len(item.readings))]
    for kind, n, ds in objects:
        name = f"{_stem(img)}.sc.dcm" if kind == "sc" else f"{_stem(img)}{suffixes[n]}.{fmt}.dcm"
        _save(ds, out_dir / name)
        result.files.append(name)
    return result


def dicom_datasets(ctx: Context, fmt: str, item: Item) -> tuple[list[tuple[str, int, Dataset]], str | None]:
    """The SEG or SR objects of an item's readings as (kind, reading index, dataset), a PNG/JPEG source's Secondary
    Capture ("sc") first where they reference it; or no objects and the reason (a file or PACS store shares this)."""
    img = item.image
    path = ctx.store.path_for(img["file_sha256"])
    if not path.exists():
        return [], "its stored file is missing from the image store"
    try:
        if img["source_format"] == "dicom":
            source = dicom_io.source_dataset(path)
        else:  # PNG / JPEG: a Secondary Capture of the pixels comes first
            pixels = windowing.render(dicom_io.load(path))
            source = dicom_objects.secondary_capture(pixels, img["study"], img["spacing"], img["pixel_sha256"])
    except dicom_io.ImageRejected as exc:
        return [], f"its stored file cannot be read ({exc.code})"
    except OSError as exc:  # the message would name the store's path
        return [], f"its stored file cannot be read ({type(exc).__name__})"
    objects = []
    for n, reading in enumerate(item.readings):
        ds = (
            dicom_objects.segmentation(source, reading)
            if fmt == "seg"
            else dicom_objects.structured_report(source, reading)
        )
        if ds is not None:
            objects.append((fmt, n, ds))
    if not objects:
        return [], "no label map to write" if fmt == "seg" else "nothing to write"
    if img["source_format"] != "dicom":  # the instance the SEG / SR reference, sent only when they are
        objects.insert(0, ("sc", -1, source))
    return objects, None


def _save(ds, path: Path) -> None:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    write_atomic(path, buf.getvalue(), mode=OUT_MODE)


def label_map_of(path: Path) -> np.ndarray:
    """The label map a SEG written here holds (to check an export): each segment back to its structure value."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source], combine_segments=False)[0]
    out = np.zeros(masks.shape[:2], np.uint8)
    by_name = {n: v for v, n in vocabulary.STRUCTURES.items()}
    for k, d in enumerate(seg.SegmentSequence):
        out[masks[..., k] > 0] = by_name[d.SegmentLabel]
    return out
