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
from dataclasses import dataclass
from pathlib import Path

import cv2
from sqlalchemy import select

from db import annotations as ann_repo
from db import audit
from db import engine as dbe
from db.models import AnnotationStatus, AnnotationVersion, Image, Study
from inference import evaluation
from inference.registry import MODEL_JSON, Registry
from inference.training import common
from inference.training.data import paired_files, read_labels_csv
from inference.types import ModelSpec
from services import labelling, models_admin, vocabulary
from services.context import Context
from viewer import dicom_io, windowing

log = logging.getLogger(__name__)

MARGIN = 0.01
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
    patient: str  # a hash: no patient identifier leaves the database
    findings: tuple[str, ...]
    label_map_sha256: str | None
    source_name: str = (
        ""  # the imported file's name: the same picture in the shared data is left out of training
    )


def _patient_key(study: Study, image_id: int) -> str:
    raw = (
        f"{study.issuer_of_patient_id or ''}\x00{study.patient_id}"
        if study.patient_id
        else f"image {image_id}"
    )
    return "p" + hashlib.sha256(raw.encode()).hexdigest()[:16]


def final_annotations(ctx: Context, task_name: str, kind: str) -> tuple[labelling.Task, list[Corrected]]:
    """The newest final annotation of every image of the task that carries what `kind` learns from (finding
    labels for classification, a label map for segmentation). Refused when there is none."""
    try:
        task = labelling.get(ctx, task_name)
    except labelling.TaskError as exc:
        raise ShadowError(str(exc)) from None
    out = []
    with dbe.read(ctx.engine) as s:
        for row in ann_repo.heads(s, task.id):
            if row.status != AnnotationStatus.final:
                continue
            labels = json.loads(row.labels)
            if kind == "classification" and not labels:
                continue
            if kind == "segmentation" and row.label_map_sha256 is None:
                continue
            image = s.get(Image, row.image_id)
            study = s.get(Study, image.study_id)
            present = tuple(
                sorted(k for k, v in labels.items() if v == "present" and k != vocabulary.NO_FINDING)
            )
            out.append(Corrected(f"task{task.id}-image{image.id}.png", image.id, row.id, _patient_key(study, image.id),
                                 present, row.label_map_sha256, image.original_filename))  # fmt: skip
    if not out:
        what = "finding labels" if kind == "classification" else "a lung/heart/clavicle label map"
        raise ShadowError(f"task {task_name!r} has no final annotation with {what}: nothing to learn from")
    return task, out


def by_version_ids(ctx: Context, ids: Sequence[int]) -> list[Corrected]:
    """The exact annotation versions a candidate recorded (versions are never overwritten)."""
    with dbe.read(ctx.engine) as s:
        rows = {
            r.id: r for r in s.scalars(select(AnnotationVersion).where(AnnotationVersion.id.in_(list(ids))))
        }
        if missing := [i for i in ids if i not in rows]:
            raise ShadowError(
                f"annotation version(s) {missing} recorded by the candidate are not in this database"
            )
        out = []
        for i in ids:
            row = rows[i]
            image = s.get(Image, row.image_id)
            present = tuple(sorted(k for k, v in json.loads(row.labels).items()
                                   if v == "present" and k != vocabulary.NO_FINDING))  # fmt: skip
            out.append(Corrected(f"task{row.task_id}-image{image.id}.png", image.id, row.id,
                                 _patient_key(s.get(Study, image.study_id), image.id), present, row.label_map_sha256))  # fmt: skip
        return out


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


def _standard_files(
    parent: ModelSpec, names: list[str], groups: list[str], seed: int
) -> tuple[list[str], str]:
    """The standard validation images: those the parent version recorded, else a patient split made now."""
    recorded = (parent.metadata.get("data") or {}).get("val_files")
    if recorded:
        present = set(names)
        return [f for f in recorded if f in present], f"the validation files recorded by {parent.ref}"
    _, val = common.split_by_group(names, groups, 0.2, seed)
    return val, f"a 20% patient split of the shared data (seed {seed}): {parent.ref} records none"


def train_from_task(ctx: Context, registry: Registry, cfg, kind: str, task_name: str, *, init: str | None,
                    shared_limit: int | None = None, holdout: float = HOLDOUT_FRACTION, argv=None) -> dict:  # fmt: skip
    """Fine-tune `cfg` (a ClassificationConfig or SegmentationConfig naming the shared data) with the final
    annotations of `task_name`, from `init` or the active version. Returns the trainer's result, its model.json
    completed with the "from_task" provenance."""
    from dataclasses import replace

    start = registry.check(registry.resolve(init)) if init else active_spec(ctx, registry, kind)
    task, items = final_annotations(ctx, task_name, kind)
    check_start(start, kind, task)
    if kind == "segmentation" and start.family != "anatomy_unet_smp":
        raise ShadowError(f"{start.ref} ({start.family}) cannot be fine-tuned here: start from an "
                          "anatomy_unet_smp version with --init")  # fmt: skip
    train_items, held_items = common.split_by_group(items, [c.patient for c in items], holdout, cfg.seed)
    if len({c.patient for c in items}) < 2:
        train_items, held_items = items, []  # one patient: nothing can be held out (recorded as such)
    with tempfile.TemporaryDirectory(prefix="cxr-review-from-task-") as tmp:
        if kind == "classification":
            shared = read_labels_csv(cfg.labels, cfg.images)
            names, groups = [r.file for r in shared], [r.patient for r in shared]
            images, labels = export(ctx, items, kind, Path(tmp), cfg.images, cfg.labels)
        else:
            shared_pairs = paired_files(cfg.images, cfg.masks)
            names = groups = [p.name for p, _ in shared_pairs]
            images, labels = export(ctx, items, kind, Path(tmp), cfg.images, cfg.masks)
        standard, standard_from = _standard_files(start, names, groups, cfg.seed)
        corrected_sources = {c.source_name for c in items}
        standard = [f for f in standard if f not in corrected_sources]  # scored as corrections, not twice
        keep_shared = [n for n in names if n not in set(standard) and n not in corrected_sources][
            :shared_limit
        ]
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
        run = replace(cfg, **paths, init=start.ref, only=only, limit=None, version=version)
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
        "annotations": [{"image_id": c.image_id, "annotation_version_id": c.annotation_version_id, "file": c.file}
                        for c in items],
        "trained_on": [c.annotation_version_id for c in train_items],
        "held_out": [c.annotation_version_id for c in held_items],
        "held_out_rule": f"by patient (hashed), fraction {holdout}, seed {cfg.seed}; never trained on",
        "n_patients": len({c.patient for c in items}),
        "corrections_sha256": hashlib.sha256("\n".join(
            f"{c.annotation_version_id}\t{c.image_id}\t{'|'.join(c.findings)}\t{c.label_map_sha256 or ''}"
            for c in items).encode()).hexdigest(),
        "shared_files_used": len(keep_shared),
        "absent_means": "a finding not marked present in the final annotation counts as absent"
        if kind == "classification" else "label map values 0 background, 1 lungs, 2 heart, 3 clavicles",
    }  # fmt: skip
    meta["standard_validation"] = {"from": standard_from, "files": sorted(standard),
                                   "note": "kept out of this version's training"}  # fmt: skip
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
        held = by_version_ids(ctx, meta["from_task"]["held_out"])
        if held:
            h_images, h_truth = export(ctx, held, kind, Path(tmp))
            sets["held-out corrected images"] = _compare(runner, kind, cand, active, h_images, h_truth,
                                                         [c.file for c in held], n_boot, seed)  # fmt: skip
        else:
            sets["held-out corrected images"] = {"skipped": "the task had one patient: nothing was held out"}
        standard = meta["standard_validation"]["files"][:standard_limit]
        sets["standard validation set"] = _compare(runner, kind, cand, active, Path(data["images"]),
                                                   Path(data[truth_key]), standard, n_boot, seed)  # fmt: skip
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
    if decision == "promoted":  # first: a refused activation leaves the candidate a candidate, with the reason
        try:
            models_admin.set_active(ctx, registry, kind, cand.ref, user_id)
        except models_admin.ModelChoiceRefused as exc:
            decision = record["decision"] = "refused"
            failures.append(f"activation refused: {exc}")
    new = dict(meta) | {"shadow_evaluation": record,
                        "status": "promoted" if decision == "promoted" else "candidate"}  # fmt: skip
    common.write_model_json(Path(cand.directory), new)

    def tx(s):
        audit.add(s, "model_shadow_evaluated", actor_id=user_id, target=cand.ref,
                  details={"task": kind, "decision": decision, "active": active.ref, "reasons": failures})  # fmt: skip

    dbe.write(ctx.engine, tx)
    log.info("shadow evaluation of %s against %s: %s", cand.ref, active.ref, decision)
    return record


def status_line(spec: ModelSpec) -> str:
    """One line for the Models page: "" for a version not trained from corrections."""
    meta = spec.metadata
    if "from_task" not in meta:
        return ""
    record = meta.get("shadow_evaluation")
    task = meta["from_task"]["task"]
    if record is None:
        return f"candidate from task {task!r}: not shadow-evaluated yet"
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


def candidate_scores(ctx: Context, runner, image: dict, ref: str, role: str) -> dict:
    """The candidate's finding scores on a stored image (`image`: its id), computed now and not stored: shadow
    results are for comparison only. Refused unless the role is in SHADOW_ROLES (checked here, on the server,
    whatever the page shows)."""
    from services import analysis

    if role not in SHADOW_ROLES:
        raise NotAllowed("shadow mode (candidate models) is for researchers only")
    from inference.types import ModelUnavailable

    try:
        spec = runner.registry.check(runner.registry.resolve(ref))
    except (KeyError, ModelUnavailable) as exc:  # gone or its weights changed since the page listed it
        raise ShadowError(f"candidate {ref} cannot run now: {exc}") from exc
    if spec.task != "classification" or "from_task" not in spec.metadata:
        raise ShadowError(f"{spec.ref} is not a classification candidate trained from corrections")
    try:
        x = analysis.model_input(dicom_io.load(ctx.store.path_for(_file_sha(ctx, image["id"]))))
    except (OSError, dicom_io.DicomRejected) as exc:
        raise ShadowError(f"the image cannot be read for the candidate: {type(exc).__name__}") from exc
    res = runner.classify(x, spec)
    return {"model": spec.provenance(), "score_kind": spec.score_kind, "probabilities": res.probabilities,
            "status": spec.metadata.get("status", "candidate")}  # fmt: skip
