"""Learning from corrections: fine-tune from the final annotations of a labelling task, then shadow-evaluate the
candidate against the active version and promote it only when it is not worse.

`train_from_task` exports the task's final annotations (finding labels, or lung/heart/clavicle label maps) beside
the shared data, holds a part of the corrected images out by patient, and trains from the active version through
the ordinary trainers; the new version's model.json records the task, the annotation versions used, the held-out
images, the data hashes and the parent version. `shadow_evaluate` scores candidate and active version on the same
images (the held-out corrected ones and the standard validation set the parent recorded), with a paired bootstrap
interval of the difference, and applies PROMOTION_RULE. Promotion goes through models_admin.set_active, so the
history, the audit and the one-click rollback of the Models page work as for any other choice."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select

from db import annotations as ann_repo
from db import audit
from db import engine as dbe
from db.models import AnnotationStatus, AnnotationVersion, Image, LabellingTask, Study
from inference import evaluation, evidence, metrics
from inference.registry import MODEL_JSON, Registry
from inference.training import common
from inference.training.data import paired_files, read_labels_csv
from inference.types import ModelSpec
from services import labelling, models_admin, vocabulary
from services.context import Context
from viewer import dicom_io, windowing

log = logging.getLogger(__name__)

MARGIN = evidence.NON_INFERIORITY_MARGIN
PROMOTION_RULE = (
    f"promoted only when, on every evaluated set, the lower bound of the 95% paired bootstrap interval of "
    f"candidate minus active is >= -{MARGIN} (mean AUC over findings for classification; Dice per structure "
    "for segmentation); a set that cannot be scored (e.g. no finding with a positive and a negative) is "
    "reported and not counted, and at least one set must be scored"
)
HOLDOUT_FRACTION = 0.3
SEG_LABELS = ("background", "lungs", "heart", "clavicles")


class ShadowError(ValueError):
    """A training or shadow evaluation refused before anything was trained or changed, with the reason."""


@dataclass(frozen=True)
class Corrected:
    """One image's final annotation as exported for training."""

    file: str
    image_id: int
    annotation_version_id: int
    # the shared labels' Patient ID where the image is a shared file, else a hash of issuer and patient id (no
    # patient identifier leaves the database)
    patient: str
    findings: tuple[str, ...]
    label_map_sha256: str | None
    source_name: str = ""  # the imported file's name
    asked: tuple[str, ...] = ()  # the findings the task's schema asked about
    shared_file: str = ""  # the shared file this image is (same pixels, else same name): "" when none
    unknown: tuple[str, ...] = ()  # findings with no label: not asked and not a shared file


@dataclass(frozen=True)
class SharedFile:
    """One file of the shared data: its patient (the labels CSV's Patient ID; the file itself for label maps)
    and its finding labels."""

    file: str
    patient: str
    findings: tuple[str, ...] = ()


class SharedIndex:
    """Which shared file a stored image is: by pixel hash, else by file name (the failure explorer imports
    PNGs under their shared name, with no patient id). The full pixel index is built only when needed."""

    def __init__(self, images: Path, files: Sequence[SharedFile]):
        self.images = Path(images)
        self.files = {f.file: f for f in files}
        self._by_pixels: dict[str, str] | None = None

    def _pixels(self, name: str) -> str | None:
        try:
            return dicom_io.pixel_sha256(dicom_io.load(self.images / name))
        except (OSError, ValueError, dicom_io.ImageRejected):  # an unreadable shared file matches nothing
            return None

    def match(self, pixel_sha256: str, name: str) -> SharedFile | None:
        if name in self.files and self._pixels(name) == pixel_sha256:
            return self.files[name]
        if self._by_pixels is None:
            self._by_pixels = {}
            for f in self.files:
                if (h := self._pixels(f)) is not None:
                    self._by_pixels.setdefault(h, f)
        if (hit := self._by_pixels.get(pixel_sha256)) is not None:
            return self.files[hit]
        return self.files.get(name)


def shared_index(cfg, kind: str) -> SharedIndex:
    if kind == "classification":
        rows = read_labels_csv(cfg.labels, cfg.images)
        return SharedIndex(cfg.images, [SharedFile(r.file, r.patient, r.findings) for r in rows])
    return SharedIndex(
        cfg.images, [SharedFile(p.name, p.name) for p, _ in paired_files(cfg.images, cfg.masks)]
    )


def _patient_key(study: Study, image_id: int) -> str:
    raw = (
        f"{study.issuer_of_patient_id or ''}\x00{study.patient_id}"
        if study.patient_id
        else f"image {image_id}"
    )
    return "p" + hashlib.sha256(raw.encode()).hexdigest()[:16]


def _corrected(s, row: AnnotationVersion, schema: dict, shared: SharedIndex | None) -> Corrected:
    """The annotation as training data. A finding the task did not ask about takes the shared labels' value
    for the same image; without one it is `unknown` (never "absent")."""
    from inference.models.cxr14_mobilenetv3_multilabel import FINDINGS

    image = s.get(Image, row.image_id)
    study = s.get(Study, image.study_id)
    asked = tuple(f for f in schema.get("findings", ()) if f != vocabulary.NO_FINDING)
    present = {k for k, v in json.loads(row.labels).items() if v == "present" and k != vocabulary.NO_FINDING}
    hit = shared.match(image.pixel_sha256, image.original_filename) if shared is not None else None
    not_asked = [f for f in FINDINGS if f not in asked]
    unknown: tuple[str, ...] = ()
    if hit is not None:
        present |= {f for f in hit.findings if f in not_asked}
    else:
        unknown = tuple(not_asked)
    return Corrected(f"task{row.task_id}-image{image.id}.png", image.id, row.id,
                     hit.patient if hit is not None else _patient_key(study, image.id), tuple(sorted(present)),
                     row.label_map_sha256, image.original_filename, asked, hit.file if hit else "", unknown)  # fmt: skip


def _schema(s, task_id: int) -> dict:
    return json.loads(s.get(LabellingTask, task_id).schema)


def final_annotations(ctx: Context, task_name: str, kind: str,
                      shared: SharedIndex | None = None) -> tuple[labelling.Task, list[Corrected]]:  # fmt: skip
    """The newest final annotation of every image of the task that carries what `kind` learns from (finding
    labels for classification, a label map for segmentation), matched to the shared data when `shared` is
    given. Refused when there is none, or for segmentation when the task does not outline every structure."""
    try:
        task = labelling.get(ctx, task_name)
    except labelling.TaskError as exc:
        raise ShadowError(str(exc)) from None
    if kind == "segmentation" and (missing := [x for x in SEG_LABELS[1:] if x not in task.structures]):
        raise ShadowError(f"task {task_name!r} does not outline {', '.join(missing)}: its label maps would teach "
                          "that they are absent; learn from a task whose structures are lungs, heart and clavicles")  # fmt: skip
    out = []
    with dbe.read(ctx.engine) as s:
        schema = _schema(s, task.id)
        for row in ann_repo.heads(s, task.id):
            if row.status != AnnotationStatus.final:
                continue
            if kind == "classification" and not json.loads(row.labels):
                continue
            if kind == "segmentation" and row.label_map_sha256 is None:
                continue
            out.append(_corrected(s, row, schema, shared))
    if not out:
        what = "finding labels" if kind == "classification" else "a lung/heart/clavicle label map"
        raise ShadowError(f"task {task_name!r} has no final annotation with {what}: nothing to learn from")
    return task, out


def refuse_unknown(task_name: str, items: Sequence[Corrected]) -> None:
    """Classification: a finding the task did not ask about, on an image that is not a shared file with
    labels, has no label; training would take it as absent. (The trainer cannot mask a finding out of the loss.)"""
    if bad := [c for c in items if c.unknown]:
        missing = sorted({f for c in bad for f in c.unknown})
        raise ShadowError(
            f"task {task_name!r} did not ask about {', '.join(missing)}, and {len(bad)} of its corrected images "
            f"(image ids {', '.join(str(c.image_id) for c in bad[:10])}{', …' if len(bad) > 10 else ''}) are not "
            "shared files with labels for them: training would take those findings as absent. Learn from a task "
            "that asks about every finding, or from images of the shared data"
        )


def by_version_ids(ctx: Context, ids: Sequence[int], shared: SharedIndex | None = None) -> list[Corrected]:
    """The exact annotation versions a candidate recorded (versions are never overwritten)."""
    with dbe.read(ctx.engine) as s:
        rows = {
            r.id: r for r in s.scalars(select(AnnotationVersion).where(AnnotationVersion.id.in_(list(ids))))
        }
        if missing := [i for i in ids if i not in rows]:
            raise ShadowError(
                f"annotation version(s) {missing} recorded by the candidate are not in this database"
            )
        return [_corrected(s, rows[i], _schema(s, rows[i].task_id), shared) for i in ids]


def _file_sha(ctx: Context, image_id: int) -> str:
    with dbe.read(ctx.engine) as s:
        return s.get(Image, image_id).file_sha256


def export(ctx: Context, items: Sequence[Corrected], kind: str, folder: Path, shared_images: Path | None = None,
           shared_truth: Path | None = None) -> tuple[Path, Path]:  # fmt: skip
    """A data folder: the corrected images (the pixels the viewer's models see, as PNG) with a labels CSV
    (classification) or a masks folder (segmentation), plus the shared images and their labels CSV / masks
    folder (linked) when given. Returns (images, labels CSV or masks folder)."""
    images = folder / "images"
    truth = folder / ("labels.csv" if kind == "classification" else "masks")
    images.mkdir(parents=True)
    for c in items:
        pixels = windowing.render(dicom_io.load(ctx.store.path_for(_file_sha(ctx, c.image_id))))
        cv2.imwrite(str(images / c.file), pixels)
    if shared_images is not None:
        _link_files(Path(shared_images), images)
    if kind == "classification":
        with open(truth, "w", newline="") as g:
            w = csv.writer(g)
            w.writerow(["Image Index", "Finding Labels", "Patient ID"])
            for c in items:  # first: --limit never cuts the corrections
                w.writerow([c.file, "|".join(c.findings) or "No Finding", c.patient])
            if shared_truth is not None:
                with open(shared_truth, newline="") as f:
                    for r in csv.DictReader(f):
                        w.writerow(
                            [r["Image Index"], r["Finding Labels"], r.get("Patient ID") or r["Image Index"]]
                        )
        return images, truth
    truth.mkdir()
    for c in items:
        truth.joinpath(c.file).write_bytes(ctx.store.path_for(c.label_map_sha256).read_bytes())
    if shared_truth is not None:
        _link_files(Path(shared_truth), truth)
    return images, truth


def _link_files(src: Path, dst: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.is_file():
            (dst / p.name).symlink_to(p.resolve())


def check_start(spec: ModelSpec, kind: str, task: labelling.Task | None = None) -> None:
    """Refuse, before anything trains, a starting (or candidate) model of another task or with other labels."""
    from inference.models import cxr14_mobilenetv3_multilabel as cls_family

    if spec.task != kind:
        raise ShadowError(f"{spec.ref} is a {spec.task} model: it cannot start or be a {kind} model")
    labels = tuple(x for x in spec.labels if x != vocabulary.NO_FINDING)
    if kind == "classification":
        if set(labels) != set(cls_family.FINDINGS):
            raise ShadowError(f"{spec.ref} scores {', '.join(labels)}; the classifier learns "
                              f"{', '.join(cls_family.FINDINGS)}")  # fmt: skip
        if task is not None and (other := sorted(set(task.findings) - set(labels) - {vocabulary.NO_FINDING})):
            raise ShadowError(
                f"task {task.name!r} labels {', '.join(other)}, which {spec.ref} does not score"
            )
    elif tuple(spec.labels) != SEG_LABELS:
        raise ShadowError(f"{spec.ref} segments {', '.join(spec.labels)}; the anatomy model needs "
                          f"{', '.join(SEG_LABELS)}")  # fmt: skip


def active_spec(ctx: Context, registry: Registry, kind: str) -> ModelSpec:
    chosen, unavailable = models_admin.active_specs(ctx, registry, (kind,))
    if kind not in chosen:
        raise ShadowError(f"no {kind} version can run now: {unavailable}")
    return chosen[kind]


NOT_COUNTED = (
    "not counted: {ref} records no validation files, and any split made now could hold images it trained on"
)


def _standard_files(parent: ModelSpec, names: list[str]) -> tuple[list[str], str, bool]:
    """(files, where from, counted): the validation images the parent version recorded. A parent that records
    none has no fair standard set (a split made now would hold images it trained on): empty, not counted."""
    recorded = (parent.metadata.get("data") or {}).get("val_files")
    if recorded:
        present = set(names)
        return [f for f in recorded if f in present], f"the validation files recorded by {parent.ref}", True
    return [], NOT_COUNTED.format(ref=parent.ref), False


def train_from_task(ctx: Context, registry: Registry, cfg, kind: str, task_name: str, *, init: str | None,
                    shared_limit: int | None = None, holdout: float = HOLDOUT_FRACTION, argv=None) -> dict:  # fmt: skip
    """Fine-tune `cfg` (a ClassificationConfig or SegmentationConfig naming the shared data) with the final
    annotations of `task_name`, from `init` or the active version. Returns the trainer's result, its model.json
    completed with the "from_task" provenance."""
    start = registry.check(registry.resolve(init)) if init else active_spec(ctx, registry, kind)
    task, items = final_annotations(ctx, task_name, kind)
    check_start(start, kind, task)
    if kind == "segmentation" and start.family != "anatomy_unet_smp":
        raise ShadowError(f"{start.ref} ({start.family}) cannot be fine-tuned here: start from an "
                          "anatomy_unet_smp version with --init")  # fmt: skip
    shared = shared_index(cfg, kind)
    task, items = final_annotations(ctx, task_name, kind, shared)
    if kind == "classification":
        refuse_unknown(task_name, items)
    # patients are the shared data's Patient IDs where a corrected image is a shared file, so a patient's other
    # shared films follow the split
    train_items, held_items = common.split_by_group(items, [c.patient for c in items], holdout, cfg.seed)
    if len({c.patient for c in items}) < 2:
        train_items, held_items = items, []  # one patient: nothing can be held out (recorded as such)
    names = list(shared.files)
    patient_of = {f.file: f.patient for f in shared.files.values()}
    corrected_files = {c.shared_file for c in items} | {c.source_name for c in items}
    all_patients, held_patients = {c.patient for c in items}, {c.patient for c in held_items}
    standard, standard_from, counted = _standard_files(start, names)
    # scored as corrections, not twice; and no patient the candidate trained on
    standard = [f for f in standard if f not in corrected_files and patient_of[f] not in all_patients]
    standard_set = set(standard)
    keep_shared = [n for n in names if n not in standard_set and n not in corrected_files
                   and patient_of[n] not in held_patients][:shared_limit]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cxr-review-from-task-") as tmp:
        if kind == "classification":
            images, labels = export(ctx, items, kind, Path(tmp), cfg.images, cfg.labels)
        else:
            images, labels = export(ctx, items, kind, Path(tmp), cfg.images, cfg.masks)
        only = frozenset(keep_shared) | {c.file for c in train_items}
        paths = (
            {"images": images, "labels": labels}
            if kind == "classification"
            else {"images": images, "masks": labels}
        )
        # a new version number past every version the app knows of this model (assets/models included)
        version = cfg.version or common.next_version(
            cfg.out, cfg.model_id, [s.version for s in registry.specs() if s.model_id == cfg.model_id]
        )
        # a classifier goes on with its starting version's head (the distilled ones have "pooled_linear")
        head = {"head": start.arch.get("head", cfg.head)} if kind == "classification" else {}
        run = replace(cfg, **paths, **head, init=start.ref, only=only, limit=None, version=version)
        result = _train(kind, run, argv)
        vdir = Path(result["model_json"]).parent
        meta = json.loads((vdir / MODEL_JSON).read_text())
    meta["data"] |= {"images": str(cfg.images), **({"labels": str(cfg.labels)} if kind == "classification"
                                                   else {"masks": str(cfg.masks)})}  # fmt: skip
    meta["parent"] = {
        "model_id": start.model_id,
        "version": start.version,
        "weights_sha256": start.weights_sha256,
    }
    meta["from_task"] = {
        "task": task.name, "task_id": task.id,
        "annotations": [{"image_id": c.image_id, "annotation_version_id": c.annotation_version_id, "file": c.file,
                         "shared_file": c.shared_file or None} for c in items],
        "trained_on": [c.annotation_version_id for c in train_items],
        "held_out": [c.annotation_version_id for c in held_items],
        "held_out_rule": f"by patient (the shared labels' Patient ID where the image is a shared file, else hashed), "
                         f"fraction {holdout}, seed {cfg.seed}; never trained on, nor any shared file of a "
                         "held-out patient",
        "n_patients": len(all_patients),
        "corrections_sha256": hashlib.sha256("\n".join(
            f"{c.annotation_version_id}\t{c.image_id}\t{'|'.join(c.findings)}\t{c.label_map_sha256 or ''}"
            for c in items).encode()).hexdigest(),
        "shared_files_used": len(keep_shared),
        "absent_means": "a finding the task asked about and not marked present counts as absent; a finding it did "
                        "not ask about takes the shared labels of the same image (same pixels, else same file name)"
        if kind == "classification" else "label map values 0 background, 1 lungs, 2 heart, 3 clavicles",
    }  # fmt: skip
    meta["standard_validation"] = {"from": standard_from, "files": sorted(standard), "counted": counted,
                                   "note": "kept out of this version's training, with every corrected patient"}  # fmt: skip
    meta["status"] = "candidate"
    common.write_model_json(vdir, meta)
    return meta | {"model_json": str(vdir / MODEL_JSON)}


def _train(kind: str, cfg, argv) -> dict:
    if kind == "classification":
        from inference.training.classification import train
    else:
        from inference.training.segmentation import train
    return train(cfg, argv)


# --- shadow evaluation ---------------------------------------------------------------------------------------------
def _compare(runner, kind: str, cand: ModelSpec, active: ModelSpec, images: Path, truth: Path, files: list[str],
             n_boot: int, seed: int) -> dict:  # fmt: skip
    """{"n_images", "differences": {metric: paired bootstrap}} or {"skipped": reason}."""
    if not files:
        return {"skipped": "no images"}
    if kind == "classification":
        keep = set(files)
        rows = [r for r in read_labels_csv(truth, images) if r.file in keep]
        rep = evaluation.evaluate_classification(runner, cand, images, rows, n_boot, seed, against=active)
        diff = rep["against"]["model_minus_against"]["all"]
        if diff["difference"] is None:
            return {"n_images": len(rows), "skipped": "no finding has both a positive and a negative image"}
        return {"n_images": len(rows), "differences": {"mean AUC": diff}}
    keep = set(files)
    pairs = [p for p in paired_files(images, truth) if p[0].name in keep]
    rep = evaluation.evaluate_segmentation(runner, cand, pairs, False, False, n_boot, seed, against=active)
    return {"n_images": len(pairs),
            "differences": {f"Dice {k}": v for k, v in rep["against"]["model_minus_against"].items()}}  # fmt: skip


def shadow_evaluate(ctx: Context, runner, ref: str, user_id: int | None, *, n_boot: int = 1000, seed: int = 0,
                    standard_limit: int | None = None, promote: bool = True) -> dict:  # fmt: skip
    """Compare candidate `ref` with the active version of its task, paired, on its held-out corrected images
    and the standard validation set; promote it when PROMOTION_RULE holds (and `promote`), else leave it a
    candidate. The decision and its reason go into the candidate's model.json and the audit."""
    registry = runner.registry
    cand = registry.check(registry.resolve(ref))
    kind = cand.task
    if kind not in ("classification", "segmentation"):
        raise ShadowError(
            f"{cand.ref} is a {kind} model: shadow evaluation covers classification and segmentation"
        )
    active = active_spec(ctx, registry, kind)
    check_start(cand, kind)
    check_start(active, kind)
    if (cand.model_id, cand.version) == (active.model_id, active.version):
        raise ShadowError(f"{cand.ref} is the active {kind} version already")
    meta = cand.metadata
    if "from_task" not in meta or "standard_validation" not in meta:
        raise ShadowError(f"{cand.ref} was not trained from corrections (its model.json has no from_task)")
    data = meta["data"]
    truth_key = "labels" if kind == "classification" else "masks"
    sets = {}
    with tempfile.TemporaryDirectory(prefix="cxr-review-shadow-") as tmp:
        ids = meta["from_task"]["held_out"]
        # the labels the candidate trained with: findings the task did not ask about come from the shared data
        shared = shared_index(_Paths(Path(data["images"]), Path(data[truth_key])), kind) if ids else None
        held = by_version_ids(ctx, ids, shared)
        if kind == "classification":
            refuse_unknown(meta["from_task"]["task"], held)
        if held:
            h_images, h_truth = export(ctx, held, kind, Path(tmp))
            sets["held-out corrected images"] = _compare(runner, kind, cand, active, h_images, h_truth,
                                                         [c.file for c in held], n_boot, seed)  # fmt: skip
        else:
            sets["held-out corrected images"] = {"skipped": "the task had one patient: nothing was held out"}
        std = meta["standard_validation"]
        if not std.get("counted", True) or str(std.get("from", "")).startswith("a 20% patient split"):
            sets["standard validation set"] = {"skipped": NOT_COUNTED.format(ref=f"the parent of {cand.ref}")}
        else:
            sets["standard validation set"] = _compare(runner, kind, cand, active, Path(data["images"]),
                                                       Path(data[truth_key]), std["files"][:standard_limit],
                                                       n_boot, seed)  # fmt: skip
    failures, scored = [], 0
    for name, result in sets.items():
        for metric, d in result.get("differences", {}).items():
            scored += 1
            if d["ci95"][0] < -MARGIN:
                failures.append(f"{name}: {metric} candidate minus active {d['difference']:+.3f} "
                                f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) is worse than allowed")  # fmt: skip
    if not scored:
        failures.append("no evaluated set could be scored")
    decision = "promoted" if not failures and promote else ("not worse" if not failures else "refused")
    record = {
        "decision": decision, "reasons": failures, "rule": PROMOTION_RULE,
        "active": active.provenance(), "candidate": cand.provenance(), "sets": sets,
        "bootstrap": {"resamples": n_boot, "seed": seed},
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    vdir = Path(cand.directory)

    def audited(s):
        audit.add(s, "model_shadow_evaluated", actor_id=user_id, target=cand.ref,
                  details={"task": kind, "decision": decision, "active": active.ref, "reasons": failures})  # fmt: skip

    if decision == "promoted":
        # the record first ("promoting"); then the activation and its audit rows in one transaction; then the
        # status (an idempotent rewrite). A failure never leaves an active version without its record and audit.
        common.write_model_json(vdir, dict(meta) | {"shadow_evaluation": record, "status": "promoting"})
        try:
            models_admin.set_active(ctx, registry, kind, cand.ref, user_id, also=audited)
        except models_admin.ModelChoiceRefused as exc:
            decision = record["decision"] = "refused"
            failures.append(f"activation refused: {exc}")
    if decision != "promoted":
        dbe.write(ctx.engine, audited)
    common.write_model_json(vdir, dict(meta) | {"shadow_evaluation": record,
                                                "status": "promoted" if decision == "promoted" else "candidate"})  # fmt: skip
    log.info("shadow evaluation of %s against %s: %s", cand.ref, active.ref, decision)
    return record


@dataclass(frozen=True)
class _Paths:
    images: Path
    labels: Path

    @property
    def masks(self) -> Path:
        return self.labels


def status_line(spec: ModelSpec) -> str:
    """One line for the Models page: "" for a version not trained from corrections."""
    meta = spec.metadata
    if "from_task" not in meta:
        return ""
    record = meta.get("shadow_evaluation")
    task = meta["from_task"]["task"]
    if record is None:
        return f"candidate from task {task!r}: not shadow-evaluated yet"
    if meta.get("status") == "promoting":  # the promotion stopped half-way: Active versions says what runs
        return (
            f"promotion started on {record['at']} but not confirmed; see Active versions; from task {task!r}"
        )
    against = f"{record['active']['id']}@{record['active']['version']}"
    if record["decision"] == "promoted":
        return f"promoted on {record['at']} (not worse than {against}); from task {task!r}"
    why = "; ".join(record["reasons"]) or "evaluated without promotion (--no-promote)"
    return f"candidate, not promoted against {against}: {why}"


def difference_rows(spec: ModelSpec) -> list[dict]:
    """The paired differences of the last shadow evaluation, one row per set and metric."""
    record = spec.metadata.get("shadow_evaluation") or {}
    rows = []
    for name, result in record.get("sets", {}).items():
        if "skipped" in result:
            rows.append({"Set": name, "Metric": "—", "Images": result.get("n_images", 0), "Candidate": None,
                         "Active": None, "Difference": None, "95% CI": f"not scored: {result['skipped']}"})  # fmt: skip
            continue
        for metric, d in result["differences"].items():
            rows.append({"Set": name, "Metric": metric, "Images": result["n_images"], "Candidate": d["a"],
                         "Active": d["b"], "Difference": d["difference"],
                         "95% CI": f"{d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}"})  # fmt: skip
    return rows


# --- shadow mode in the viewer ------------------------------------------------------------------------------------
SHADOW_ROLES = ("researcher",)  # never radiologists: a candidate's scores must not sway a reading


class NotAllowed(PermissionError):
    """Shadow mode asked for by a role that may not see candidates."""


def candidates(
    registry: Registry, running: ModelSpec | None, kind: str = "classification"
) -> list[ModelSpec]:
    """Usable versions trained from corrections that do not run now, newest first."""
    return [
        s for s in registry.specs()
        if s.task == kind and "from_task" in s.metadata and registry.problem(s) is None
        and (running is None or (s.model_id, s.version) != (running.model_id, running.version))
    ]  # fmt: skip


def _candidate(runner, ref: str, role: str, kind: str) -> ModelSpec:
    """The candidate's spec, checked on the server: the role, its weights, its task and that it learnt from
    corrections."""
    if role not in SHADOW_ROLES:
        raise NotAllowed("shadow mode (candidate models) is for researchers only")
    from inference.types import ModelUnavailable

    try:
        spec = runner.registry.check(runner.registry.resolve(ref))
    except (KeyError, ModelUnavailable) as exc:  # gone or its weights changed since the page listed it
        raise ShadowError(f"candidate {ref} cannot run now: {exc}") from exc
    if spec.task != kind or "from_task" not in spec.metadata:
        raise ShadowError(f"{spec.ref} is not a {kind} candidate trained from corrections")
    return spec


def _input(ctx: Context, image: dict) -> np.ndarray:
    from services import analysis

    try:
        sha = image.get("file_sha256") or _file_sha(ctx, image["id"])  # the page's image dict carries it
        return analysis.model_input(dicom_io.load(ctx.store.path_for(sha)))
    except (OSError, dicom_io.DicomRejected) as exc:
        raise ShadowError(f"the image cannot be read for the candidate: {type(exc).__name__}") from exc


def candidate_anatomy(ctx: Context, runner, image: dict, ref: str, role: str, active: dict) -> dict:
    """A segmentation candidate's label map of a stored image beside the active version's (`active`: the stored
    anatomy result), computed now and not stored: Dice agreement per structure, both CTRs (None where the
    outlines are implausible, as the viewer withholds them). Refused unless the role is in SHADOW_ROLES."""
    from services import analysis

    spec = _candidate(runner, ref, role, "segmentation")
    x = _input(ctx, image)
    label_map, summary, _ = analysis.checked_anatomy(runner, x, spec)
    theirs = analysis.label_map(ctx, active)
    agreement = metrics.dice_per_class(label_map, theirs, evaluation.CLASSES)
    ctr = analysis.ctr_shown(summary)
    return {"model": spec.provenance(), "status": spec.metadata.get("status", "candidate"), "label_map": label_map,
            "active_label_map": theirs, "dice_vs_active": agreement, "image": x,
            "ctr": None if ctr is None else ctr["ratio"]}  # fmt: skip


def candidate_scores(ctx: Context, runner, image: dict, ref: str, role: str) -> dict:
    """The candidate's finding scores on a stored image (`image`: its id), computed now and not stored: shadow
    results are for comparison only. Refused unless the role is in SHADOW_ROLES (checked here, on the server,
    whatever the page shows)."""
    spec = _candidate(runner, ref, role, "classification")
    res = runner.classify(_input(ctx, image), spec)
    return {"model": spec.provenance(), "score_kind": spec.score_kind, "probabilities": res.probabilities,
            "status": spec.metadata.get("status", "candidate")}  # fmt: skip
