"""AI results for an image: run each available model once per (pixels, model version), keep the result in the
database and the image store, and hand back what the viewer and the CLI draw. Models whose weights are missing
or changed are reported with the reason; the others still run."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from db import annotations as db_items
from db import engine as dbe
from db import repo
from inference import postprocess
from inference.registry import GATE_TASK, TASKS, Registry
from inference.runner import Runner
from inference.types import ModelSpec, ModelUnavailable
from services import gate_overrides, models_admin, threshold_sets
from services.context import Context
from viewer import dicom_io, export, windowing

log = logging.getLogger(__name__)
LUNGS, HEART, CLAVICLES = 1, 2, 3
STRUCTURES = (("lungs", LUNGS), ("heart", HEART), ("clavicles", CLAVICLES))  # (name, value in the label map)
BOX_THRESHOLD = 0.6  # Grad-CAM level that outlines a box; fixed per release, shown with the boxes
CTR_LIMIT = 0.5
AP_NOTE = "AP view: the heart is magnified, so the ratio overstates its size; less reliable than PA."
NO_VIEW_NOTE = "View not recorded as PA: the 0.50 limit applies to PA films."
NOT_CHECKED = "quality not checked"


def flagged(result: Analysis) -> dict[str, bool]:
    """{label: positive} of the findings under the operating points in force (postprocess.positives: "No Finding"
    never beside a positive finding)."""
    if not result.findings:
        return {}
    return postprocess.positives(result.findings["probabilities"], result.thresholds)


def thresholds_rule(spec: ModelSpec) -> str:
    """How a version's default operating points were chosen, as its model.json records it, and what they did on
    the images it held out when it records that (mean sensitivity and specificity over the findings)."""
    rule = str(spec.metadata.get("thresholds_rule") or "the version records no rule for them")
    held = (spec.metadata.get("validation") or {}).get("held_out") or {}
    points = (held.get("at_thresholds") or {}).values()
    sens = [p["sensitivity"] for p in points if p.get("sensitivity") is not None]
    spec_ = [p["specificity"] for p in points if p.get("specificity") is not None]
    if sens and spec_:  # a reader should know a sensitive rule also flags many films without the finding
        rule += (f"; on {held.get('n_images', '?')} held-out images they flagged on average {np.mean(sens):.0%} of "
                 f"the films with a finding and {1 - np.mean(spec_):.0%} of those without it")  # fmt: skip
    return rule


def positive_means(result: Analysis) -> str:
    """What "positive" means for the version in force: its default operating points and the rule that chose
    them (from its model.json), or the admin's threshold set in force."""
    if result.thresholds_from and result.thresholds_from != threshold_sets.DEFAULTS:
        where = f"the operating point of threshold set {result.thresholds_from}"
    else:
        where = f"the version's default operating point ({result.thresholds_rule or 'no rule recorded'})"
    said = f"positive = score at or over {where}"
    if result.findings is None or "No Finding" in result.findings.get("probabilities", {}):
        said += "; “No Finding” is flagged only when no finding is"
    return said


def ctr_shown(anatomy: dict | None) -> dict | None:
    """The CTR to show, report and judge: None when unmeasured or when the outlines are implausible."""
    if not anatomy or anatomy.get("problems"):
        return None
    return anatomy["ctr"]


def ctr_note(view: str | None) -> str | None:
    """The caveat shown with a cardiothoracic ratio for this View Position (None for PA: the 0.50 limit holds)."""
    view = (view or "").upper()
    return None if view == "PA" else AP_NOTE if view == "AP" else NO_VIEW_NOTE


@dataclass
class Analysis:
    """Results per task as stored (JSON-ready dicts; arrays referenced by sha256 in the image store)."""

    anatomy: dict | None = None
    bone: dict | None = None
    findings: dict | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    computed_now: list[str] = field(default_factory=list)
    # The quality gate's verdict (gate_result / gate_not_checked) and the reader's override of a refusal
    # (gate_overrides.Override) under which the results above are shown; refused and not overridden: the
    # results above are None, nothing else was run.
    gate: dict | None = None
    gate_override: gate_overrides.Override | None = None
    # The operating point per finding label in force now (an admin's edit, else the model's default), read
    # with the stored results so that one rerun of the viewer reads it once.
    thresholds: dict[str, float] = field(default_factory=dict)
    thresholds_from: str = ""  # the threshold set in force, or "model defaults"
    thresholds_rule: str = ""  # how the classifier version's default operating points were chosen (model.json)
    # The stored predictions of the results above, {task: id}, and their stored items (prediction_items),
    # {task: {(kind, key): item id}}: what verdicts point at. A task whose items could not be stored yet has
    # none (its verdicts then go by their natural key, as before items existed).
    prediction_ids: dict[str, int] = field(default_factory=dict)
    item_ids: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)

    def item_id(self, task: str, kind: str, key: str) -> int | None:
        """The stored id of one AI statement of `task`'s result, or None."""
        return self.item_ids.get(task, {}).get((kind, key))

    @property
    def withheld(self) -> bool:
        """The gate refused the image and this reader has not overridden it: no AI output is shown."""
        return bool(self.gate) and self.gate["passed"] is False and self.gate_override is None

    @property
    def models(self) -> list[dict]:
        return [r["model"] for r in (self.anatomy, self.bone, self.findings) if r]

    @property
    def timings_ms(self) -> dict[str, float]:
        """{model id: its total ms when it was computed} and "total", their sum (each phase counted once)."""
        results = [r for r in (self.anatomy, self.bone, self.findings) if r]
        per_model = {r["model"]["id"]: float(r["timings_ms"]["total"]) for r in results}
        return per_model | {"total": sum(per_model.values())}


def model_input(img: dicom_io.DecodedImage) -> np.ndarray:
    """What the models see: the default display (windowed, MONOCHROME1 inverted) as float32 in [0,1]."""
    return windowing.render(img).astype(np.float32) / 255.0


def _png(arr: np.ndarray) -> bytes:
    return export.png_bytes(arr)


def with_total(runner_ms: dict[str, float], **extra_ms: float) -> dict[str, float]:
    """One model's phases (the runner's, then `extra_ms` measured here) and one "total": the runner's total plus
    the extras. Summing every value instead would count the runner's phases twice (they are in its total)."""
    phases = {k: float(v) for k, v in runner_ms.items() if k != "total"}
    total = float(runner_ms.get("total", sum(phases.values()))) + sum(extra_ms.values())
    return phases | {k: float(v) for k, v in extra_ms.items()} | {"total": total}


def anatomy_summary(label_map: np.ndarray) -> dict:
    """Area fraction per structure, the cardiothoracic ratio with its measurement lines (None when heart or
    lungs are missing) and `problems`: why the outlines do not look like a frontal chest (then the CTR is
    withheld from the reader and the report)."""
    ctr = postprocess.cardiothoracic_ratio(label_map)
    return {
        "problems": postprocess.anatomy_problems(label_map, ctr),
        "area_fraction": {
            name: float((label_map == i).mean()) for name, i in STRUCTURES
        },
        "ctr": None if ctr is None else {
            "ratio": ctr.ratio, "heart_row": ctr.heart_row, "heart_x0": ctr.heart_x0, "heart_x1": ctr.heart_x1,
            "thorax_row": ctr.thorax_row, "thorax_x0": ctr.thorax_x0, "thorax_x1": ctr.thorax_x1,
        },
    }  # fmt: skip


def prediction_items(task: str, result: dict) -> list[dict]:
    """The AI statements of one stored result, as prediction_items fields {kind, key, label, score, geometry}
    (geometry JSON or None). Pure: the same result always gives the same items.

    classification: a `finding` per label (score: its probability; geometry: its heatmap's store key) and a
    `box` per box of every label (key "{label}#{i}", its place in the stored list, which never changes since a
    prediction is never rewritten; score: the Grad-CAM level; geometry {x, y, w, h} in image pixels). Whether
    a finding is positive, and so whether its boxes are shown, depends on thresholds an admin can change, so
    every box is an item. segmentation: an `anatomy` item per structure (key lungs / heart / clavicles; score:
    its area fraction; geometry: the label map's store key and the structure's value) and the `ctr` when
    measured (score: the ratio; geometry: its measurement lines); the viewer offers it only while ctr_shown()
    does.
    bone_suppression: one `bone_suppression` item (geometry: the soft-tissue image's store key)."""
    items: list[dict] = []

    def add(kind: str, key: str, label: str | None = None, score: float | None = None, geometry=None) -> None:
        items.append({
            "kind": kind, "key": key, "label": label, "score": None if score is None else float(score),
            "geometry": None if geometry is None else json.dumps(geometry, sort_keys=True),
        })  # fmt: skip

    if task == "classification":
        heatmaps = result.get("heatmaps", {})
        for label, p in result["probabilities"].items():
            add("finding", label, label, p, {"heatmap": heatmaps[label]} if label in heatmaps else None)
        for label, boxes in result.get("boxes", {}).items():
            for i, b in enumerate(boxes):
                add("box", f"{label}#{i}", label, b.get("score"), {k: b[k] for k in ("x", "y", "w", "h")})
    elif task == "segmentation":
        areas = result.get("area_fraction", {})
        for name, value in STRUCTURES:
            add("anatomy", name, name, areas.get(name), {"label_map": result["label_map"], "value": value})
        if (ctr := result.get("ctr")) is not None:
            add("ctr", "ctr", None, ctr["ratio"], {k: v for k, v in ctr.items() if k != "ratio"})
    elif task == "bone_suppression":
        add("bone_suppression", "bone_suppression", None, None, {"soft_tissue": result["soft_tissue"]})
    return items


def _store_prediction(s, task: str, result: dict, **fields) -> tuple[int, dict, dict[tuple[str, str], int]]:
    """Store a computed result and its items in one transaction: (prediction id, the stored result, its item
    ids). Where another reader stored the same prediction first, theirs is the one kept and returned."""
    text = json.dumps(result)
    row = repo.add_prediction(s, task=task, result=text, **fields)
    stored = result if row.result == text else json.loads(row.result)
    return row.id, stored, db_items.ensure_items(s, row.id, prediction_items(task, stored))


def store_result(
    ctx: Context, task: str, spec: ModelSpec, pixel_sha256: str, result: dict, device: str
) -> tuple[int, dict, dict[tuple[str, str], int]]:
    """Store one computed result on these pixels and its items in one write: (prediction id, the stored result,
    its item ids); the viewer and evaluation runs both read it back by (pixels, model version)."""
    return dbe.write(
        ctx.engine,
        lambda s: _store_prediction(
            s, task, result, pixel_sha256=pixel_sha256, model_id=spec.model_id, model_version=spec.version,
            weights_sha256=spec.weights_sha256, device=device, timings_ms=result["timings_ms"]["total"],
        ),
    )  # fmt: skip


def _store_older_items(
    ctx: Context, missing: dict[str, tuple[int, list[dict]]]
) -> dict[str, dict[tuple[str, str], int]]:
    """The items of predictions stored before items existed ({task: (prediction id, its items)}), stored in
    one write the first time they are shown. Where the database is busy they are left for the next view (their
    verdicts go by natural key meanwhile) rather than keeping the reader from the results."""

    def tx(s):
        return {task: db_items.ensure_items(s, pid, items) for task, (pid, items) in missing.items()}

    try:
        return dbe.write(ctx.engine, tx)
    except dbe.DatabaseBusy as exc:
        log.warning("items of %d stored predictions not stored now: %s", len(missing), type(exc).__name__)
        return {}


def checked_anatomy(
    runner: Runner, x: np.ndarray, spec: ModelSpec
) -> tuple[np.ndarray, dict, dict[str, float]]:
    """(label map, anatomy_summary with the inversion check's fields, timings) of x (float in [0,1]).
    Images with plausible outlines pay nothing for the check."""
    res = runner.segment_anatomy(x, spec)
    summary = anatomy_summary(res.label_map)
    check, extra_ms = _not_checked(), {}
    if summary["problems"]:
        t0 = time.perf_counter()
        check = inversion_check(runner, x, spec)
        extra_ms["inversion_check"] = (time.perf_counter() - t0) * 1000
    return res.label_map, summary | check, with_total(res.timings_ms, **extra_ms)


def _not_checked() -> dict:
    return {"inverted_grey_scale": False, "inversion_checked_with": []}  # plausible outlines need no check


def inversion_check(runner: Runner, x: np.ndarray, spec: ModelSpec) -> dict:
    """For outlines that do not look like a chest: does the inverted picture show a plausible one? Then the
    image itself is stored inverted (bright air, dark bone) and every AI result on it is computed on the wrong
    picture. Asked of `spec`, then, where it sees no chest either way, of the registry's default anatomy
    model and of the built-in ones: on the two NIH sample images stored inverted (a paediatric and an adult AP
    portable) our anatomy_unet_smp@1.3.0 finds no plausible chest either way, the shipped model does. Returns
    {"inverted_grey_scale", "inversion_checked_with": provenance of each model asked}."""
    asked = [spec]
    with contextlib.suppress(ModelUnavailable):
        asked.append(runner.registry.for_task("segmentation"))
    asked += [s for s in runner.registry.specs() if s.task == "segmentation" and s.builtin
              and runner.registry.problem(s) is None]  # fmt: skip
    asked = list({m.ref: m for m in asked}.values())
    for n, model in enumerate(asked, start=1):
        flipped = runner.segment_anatomy(1.0 - x, model).label_map
        if not postprocess.anatomy_problems(flipped, postprocess.cardiothoracic_ratio(flipped)):
            return {
                "inverted_grey_scale": True,
                "inversion_checked_with": [m.provenance() for m in asked[:n]],
            }
    return {"inverted_grey_scale": False, "inversion_checked_with": [m.provenance() for m in asked]}


def heatmaps_and_boxes(
    runner: Runner, x: np.ndarray, spec: ModelSpec, lungs: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], dict[str, list[dict]], float]:
    """Grad-CAM of every finding label ("No Finding" has no location) from one backbone pass, clipped to the
    lungs when given, the boxes where each exceeds BOX_THRESHOLD, and the time taken in ms."""
    t0 = time.perf_counter()
    labels = [label for label in spec.labels if label != "No Finding"]
    cams = runner.gradcams(x, labels, spec)
    boxes = {}
    for label, cam in cams.items():
        if lungs is not None:
            cams[label] = cam = postprocess.clip_to_mask(cam, lungs)
        boxes[label] = [b.__dict__ for b in postprocess.heatmap_boxes(cam, BOX_THRESHOLD)]
    return cams, boxes, (time.perf_counter() - t0) * 1000


def run_task(
    runner: Runner,
    task: str,
    spec: ModelSpec,
    x: np.ndarray,
    put: Callable[[bytes], str],
    lungs: np.ndarray | None = None,
) -> dict:
    """Run one model on x and return its JSON-ready result; put() stores a PNG and returns its key.
    `timings_ms` holds the phases and one "total" for the model (Grad-CAM included for the classifier)."""
    if task == "segmentation":
        label_map, summary, timings = checked_anatomy(runner, x, spec)
        return {
            "model": spec.provenance(),
            "timings_ms": timings,
            "label_map": put(_png(label_map)),
            **summary,
        }
    if task == "bone_suppression":
        res = runner.suppress_bones(x, spec)
        return {
            "model": spec.provenance(),
            "timings_ms": with_total(res.timings_ms),
            "soft_tissue": put(_png(np.round(res.soft_tissue * 255).astype(np.uint8))),
        }
    res = runner.classify(x, spec)
    cams, boxes, cam_ms = heatmaps_and_boxes(runner, x, spec, lungs)
    heatmaps = {label: put(_png(np.round(cam * 255).astype(np.uint8))) for label, cam in cams.items()}
    return {
        "model": spec.provenance(),
        "timings_ms": with_total(res.timings_ms, gradcam_and_boxes=cam_ms),
        "score_kind": res.score_kind,
        "probabilities": res.probabilities,
        "default_thresholds": dict(spec.thresholds),
        "heatmaps": heatmaps,
        "heatmaps_clipped_to_lungs": lungs is not None,
        "box_threshold": BOX_THRESHOLD,
        "boxes": boxes,
    }


def specs_for(
    registry: Registry, picked: Iterable[ModelSpec] = ()
) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """The model per task that will run, and {model or task: reason} for those that cannot. `picked` versions
    (e.g. `--model ID@VERSION`) replace the default of their task; one that is unavailable is reported, not
    swapped for another version."""
    picked = {spec.task: spec for spec in picked}
    chosen, unavailable = {}, {}
    for task in TASKS:
        try:
            chosen[task] = registry.check(picked[task]) if task in picked else registry.for_task(task)
        except ModelUnavailable as exc:
            unavailable[exc.model_id] = exc.reason
    return chosen, unavailable


def gate_result(runner: Runner, x: np.ndarray, spec: ModelSpec) -> dict:
    """The quality gate's JSON-ready verdict on x: {passed, reasons, probabilities, model, timings_ms}."""
    res = runner.quality_gate(x, spec)
    return {"passed": res.passed, "reasons": res.reasons, "probabilities": res.probabilities,
            "model": spec.provenance(), "timings_ms": with_total(res.timings_ms)}  # fmt: skip


def gate_not_checked(reason: str) -> dict:
    """What every AI output carries when the gate model cannot run: it says so instead of passing silently."""
    return {"passed": None, "reasons": [f"{NOT_CHECKED}: {reason}"], "model": None}


def gate_spec(registry: Registry) -> tuple[ModelSpec | None, dict | None]:
    """(the gate model to run, None) or (None, gate_not_checked with why)."""
    try:
        return registry.for_task(GATE_TASK), None
    except ModelUnavailable as exc:
        return None, gate_not_checked(exc.reason)


def _gate(ctx: Context, runner: Runner, image: dict, compute: bool) -> tuple[dict | None, np.ndarray | None]:
    """(the gate's verdict, stored or computed now and stored; None when not stored and compute is False, the
    model input when it was decoded here)."""
    spec, missing = gate_spec(runner.registry)
    if spec is None:
        return missing, None
    ref = (spec.model_id, spec.version, spec.weights_sha256)
    with dbe.read(ctx.engine) as s:
        row = repo.get_predictions(s, image["pixel_sha256"], [ref]).get(ref)
        if row is not None:
            return json.loads(row.result), None
    if not compute:
        return None, None
    x = model_input(dicom_io.load(ctx.store.path_for(image["file_sha256"])))
    try:
        gate = gate_result(runner, x, spec)
    except ModelUnavailable as exc:
        return gate_not_checked(exc.reason), x
    dbe.write(ctx.engine, lambda s: repo.add_prediction(
        s, task=GATE_TASK, result=json.dumps(gate), pixel_sha256=image["pixel_sha256"], model_id=spec.model_id,
        model_version=spec.version, weights_sha256=spec.weights_sha256, device=str(runner.device),
        timings_ms=gate["timings_ms"]["total"],
    ))  # fmt: skip
    return gate, x


def analyse_cached(ctx: Context, runner: Runner, image: dict, reader_id: int | None = None) -> Analysis | None:
    """The stored results when every available model has them already, else None (nothing is computed; the
    items of predictions stored before items existed are stored, once)."""
    return analyse(ctx, runner, image, compute=False, reader_id=reader_id)


def analyse(
    ctx: Context,
    runner: Runner,
    image: dict,
    progress: Callable[[str, float], None] | None = None,
    compute: bool = True,
    reader_id: int | None = None,
) -> Analysis | None:
    """All AI results of a stored image: from the database when present, else computed now and stored
    (compute=False: None unless everything is stored). `image` holds the row's id, pixel_sha256 and
    file_sha256. The quality gate comes first: when it refuses the image and the reader (`reader_id`) has not
    overridden it, only its verdict comes back and no other model runs."""
    gate, x = _gate(ctx, runner, image, compute)
    if gate is None:
        return None
    override = None
    if gate["passed"] is False and reader_id is not None:
        override = gate_overrides.of_reader(ctx.engine, image["id"], reader_id, gate)
    if gate["passed"] is False and override is None:
        return Analysis(gate=gate)
    # The admin's active version per task where it can run, else the registry's default.
    chosen, unavailable = models_admin.active_specs(ctx, runner.registry)
    out = Analysis(unavailable=unavailable, gate=gate, gate_override=override)
    cached: dict[str, dict] = {}
    with dbe.read(ctx.engine) as s:
        refs = {task: (spec.model_id, spec.version, spec.weights_sha256) for task, spec in chosen.items()}
        rows = repo.get_predictions(s, image["pixel_sha256"], list(refs.values()))
        for task, ref in refs.items():
            if (row := rows.get(ref)) is not None:
                cached[task] = json.loads(row.result)
                out.prediction_ids[task] = row.id
        stored_items = db_items.items_of(s, out.prediction_ids.values())
        if (cls := chosen.get("classification")) is not None:
            force = threshold_sets.in_force_in(s, cls)
            out.thresholds, out.thresholds_from = force.thresholds, force.source
            out.thresholds_rule = thresholds_rule(cls)
    if not compute and set(cached) != set(chosen):
        return None
    out.item_ids = {t: stored_items[pid] for t, pid in out.prediction_ids.items() if pid in stored_items}
    # Stored before items existed: their items are stored now, in one write, and never again.
    older = {
        t: (pid, items)
        for t, pid in out.prediction_ids.items()
        if t not in out.item_ids and (items := prediction_items(t, cached[t]))
    }
    if older:
        out.item_ids |= _store_older_items(ctx, older)
    lungs = None
    for i, task in enumerate(TASKS):
        if task not in chosen:
            continue
        spec = chosen[task]
        if task not in cached:
            if progress:
                progress(f"Running {spec.model_id} {spec.version}…", i / len(TASKS))
            if x is None:
                x = model_input(dicom_io.load(ctx.store.path_for(image["file_sha256"])))
            if lungs is None and "segmentation" in cached:
                lungs = label_map(ctx, cached["segmentation"]) == LUNGS
            try:
                result = run_task(runner, task, spec, x, ctx.store.put_bytes, lungs)
            except ModelUnavailable as exc:
                out.unavailable[exc.model_id] = exc.reason
                continue
            pid, result, out.item_ids[task] = store_result(ctx, task, spec, image["pixel_sha256"], result,
                                                           str(runner.device))  # fmt: skip
            cached[task], out.prediction_ids[task] = result, pid
            out.computed_now.append(spec.model_id)
            log.info("computed %s %s in %.0f ms", spec.model_id, spec.version, result["timings_ms"]["total"])
    if (anatomy := cached.get("segmentation")) is not None and "problems" not in anatomy:
        # stored before the plausibility checks existed: checked on the stored label map, once per map
        anatomy["problems"] = list(_stored_map_problems(str(ctx.store.path_for(anatomy["label_map"]))))
    if anatomy is not None and "inverted_grey_scale" not in anatomy:
        # stored before the inversion check: only implausible outlines need it, so plausible ones cost nothing
        anatomy |= (
            _inverted_on_reading(ctx, runner, image, chosen["segmentation"], x)
            if anatomy["problems"]
            else _not_checked()
        )
    out.anatomy, out.bone, out.findings = (
        cached.get("segmentation"),
        cached.get("bone_suppression"),
        cached.get("classification"),
    )
    if progress:
        progress("Done", 1.0)
    return out


_INVERTED_ON_READING: dict[tuple[str, str], dict] = {}  # (pixel, weights sha256): implausible images only


def _inverted_on_reading(
    ctx: Context, runner: Runner, image: dict, spec: ModelSpec, x: np.ndarray | None
) -> dict:
    """The inversion check of a result stored before it existed: run once per process and image."""
    key = (image["pixel_sha256"], spec.weights_sha256)
    if key not in _INVERTED_ON_READING:
        if x is None:
            x = model_input(dicom_io.load(ctx.store.path_for(image["file_sha256"])))
        _INVERTED_ON_READING[key] = inversion_check(runner, x, spec)
    return _INVERTED_ON_READING[key]


@lru_cache(maxsize=256)
def _stored_map_problems(path: str) -> list[str]:
    # Keyed by the content-addressed path, so a cached answer can never belong to other pixels.
    lm = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    return postprocess.anatomy_problems(lm, postprocess.cardiothoracic_ratio(lm))


def stored_png(ctx: Context, key: str) -> np.ndarray:
    data = np.frombuffer(ctx.store.path_for(key).read_bytes(), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def label_map(ctx: Context, anatomy: dict) -> np.ndarray:
    return stored_png(ctx, anatomy["label_map"])
