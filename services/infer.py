"""`cxr-review infer`: every model on image files, without the database; one JSON and its PNGs per input.

Inputs are read exactly as import reads them (same checks, same rejections); the models see the same picture as
in the viewer (services.analysis.model_input). Per input, in the output folder:

- `<stem>.json`: what the models say (fields in README.md, "Command line"),
- `<stem>.anatomy.png`: 8-bit label map at the input's full resolution (0 background, 1 lungs, 2 heart,
  3 clavicles),
- `<stem>.bone_suppressed.png`: 16-bit soft-tissue image at the input's full resolution.

`<stem>` is the input's file name without its extension; a second input with the same stem in the same run gets
`<stem>-2`, and so on, so that no output overwrites another of the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference import postprocess
from inference.registry import Registry
from inference.runner import Runner
from inference.types import ANATOMY_LABELS, RESEARCH_USE, ModelSpec, ModelUnavailable
from services import analysis, importer, threshold_sets
from services.store import write_atomic
from viewer import dicom_io, export

NO_DATABASE = "model defaults (no database to read a threshold set from)"
OUT_MODE = 0o644  # infer's outputs go to a folder the user chose, for sharing (the image store is private)


class InferUsageError(Exception):
    """A command line that cannot run at all (unknown model or version, two models for one task)."""


@dataclass
class InferLine:
    """One stdout line: the input file, "done" or "rejected", why (rejected only), the JSON written."""

    file: str
    status: str  # "done" | "rejected"
    reason: str | None = None
    code: str | None = None  # machine-readable rejection code, as in `cxr-review import`
    out: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def pick_models(registry: Registry, refs: Iterable[str]) -> list[ModelSpec]:
    """The specs of `--model ID[@VERSION]` arguments (ID alone: its newest version); InferUsageError for an
    unknown id or version, or two models for one task."""
    picked: dict[str, ModelSpec] = {}
    for ref in refs:
        try:
            spec = registry.resolve(ref)
        except KeyError as exc:
            raise InferUsageError(f"--model {ref}: {exc.args[0]}") from exc
        if spec.task in picked and picked[spec.task] != spec:
            raise InferUsageError(
                f"--model {ref}: {picked[spec.task].model_id}@{picked[spec.task].version} was already "
                f"picked for {spec.task}; give one model per task"
            )
        picked[spec.task] = spec
    return list(picked.values())


class Stems:
    """Output stems unique within one run (compared case-insensitively, for case-insensitive file systems)."""

    def __init__(self):
        self._used: set[str] = set()

    def take(self, path: Path) -> str:
        stem, n = path.stem or "image", 1
        candidate = stem
        while candidate.lower() in self._used:
            n += 1
            candidate = f"{stem}-{n}"
        self._used.add(candidate.lower())
        return candidate


def infer_image(
    runner: Runner,
    chosen: dict[str, ModelSpec],
    unavailable: dict[str, str],
    img: dicom_io.DecodedImage,
    file: str,
    out_dir: Path,
    stem: str,
    view_position: str | None = None,
    in_force: Callable[[ModelSpec], threshold_sets.InForce] | None = None,
) -> dict:
    """Run the chosen model per task on one decoded image, write its PNGs into out_dir and return the JSON
    document (not yet written). A model that turns out unavailable while loading is reported, the rest run.
    `in_force`: the thresholds in force for a classifier (its active threshold set); without it, its defaults."""
    t_start = time.perf_counter()
    unavailable = dict(unavailable)
    header = img.header
    view = view_position or header.view_position
    x = analysis.model_input(img)
    gate_spec, gate = analysis.gate_spec(runner.registry)
    if gate_spec is not None:
        try:
            gate = analysis.gate_result(runner, x, gate_spec)
        except ModelUnavailable as exc:
            gate = analysis.gate_not_checked(exc.reason)
    if gate["model"] is None:
        unavailable[analysis.GATE_TASK] = gate["reasons"][0]
    doc: dict = {
        "research_use": RESEARCH_USE,
        "input": {
            "file": file,
            "source_format": header.source_format,
            "rows": header.rows,
            "columns": header.columns,
            "pixel_sha256": dicom_io.pixel_sha256(img),
            "pixel_spacing_mm": list(header.pixel_spacing_mm) if header.pixel_spacing_mm else None,
        },
        "device": str(runner.device),
        # Checked before any other model: refused, nothing else runs and every AI field stays null.
        "quality_gate": {k: gate[k] for k in ("passed", "reasons", "model")}
        | ({"probabilities": gate["probabilities"]} if "probabilities" in gate else {}),
        "models": [],
        "unavailable": unavailable,
        "anatomy_mask": None,
        "anatomy_labels": dict(enumerate(ANATOMY_LABELS)),
        "area_fraction": None,
        "ctr": None,
        "ctr_measured": None,
        "ctr_lines": None,
        "view_position": view,
        "ctr_note": None,
        "anatomy_problems": None,
        "inverted_grey_scale": None,
        "inversion_checked_with": None,
        "bone_suppressed": None,
        "findings": None,
        "score_kind": None,
        "boxes": None,
        "box_threshold": analysis.BOX_THRESHOLD,
        "heatmaps_clipped_to_lungs": False,
        "timings_ms": {},
    }
    timings: dict[str, float] = {}

    def ran(spec: ModelSpec, ms: dict[str, float]) -> None:
        doc["models"].append(spec.provenance() | {"task": spec.task})
        timings[spec.model_id] = ms["total"]

    if gate_spec is not None and "timings_ms" in gate:
        ran(gate_spec, gate["timings_ms"])
    if gate["passed"] is False:
        chosen = {}

    lungs = None
    if spec := chosen.get("segmentation"):
        try:
            label_map, summary, seg_ms = analysis.checked_anatomy(runner, x, spec)
        except ModelUnavailable as exc:
            unavailable[exc.model_id] = exc.reason
        else:
            name = f"{stem}.anatomy.png"
            write_atomic(out_dir / name, export.png_bytes(label_map), mode=OUT_MODE)
            ctr = summary["ctr"]
            lungs = label_map == postprocess.LUNGS
            doc |= {
                "anatomy_mask": name,
                "area_fraction": summary["area_fraction"],
                # `ctr` is the figure the viewer shows: null when the outlines are implausible; the ratio
                # measured on them anyway stays in `ctr_measured` for research on those cases.
                "ctr": None if analysis.ctr_shown(summary) is None else ctr["ratio"],
                "ctr_measured": None if ctr is None else ctr["ratio"],
                "ctr_lines": ctr,
                "ctr_note": None if ctr is None else analysis.ctr_note(view),
                "anatomy_problems": summary["problems"],
                "inverted_grey_scale": summary["inverted_grey_scale"],
                "inversion_checked_with": summary["inversion_checked_with"],
            }
            if summary["problems"] and ctr is not None:
                doc["ctr_note"] = "withheld, not a valid measurement: the outlines are implausible"
            ran(spec, seg_ms)

    if spec := chosen.get("bone_suppression"):
        try:
            res = runner.suppress_bones(x, spec)
        except ModelUnavailable as exc:
            unavailable[exc.model_id] = exc.reason
        else:
            name = f"{stem}.bone_suppressed.png"
            soft16 = np.round(res.soft_tissue * 65535).astype(np.uint16)
            write_atomic(out_dir / name, export.png_bytes(soft16), mode=OUT_MODE)
            doc["bone_suppressed"] = name
            ran(spec, analysis.with_total(res.timings_ms))

    if spec := chosen.get("classification"):
        try:
            res = runner.classify(x, spec)
            _, boxes, cam_ms = analysis.heatmaps_and_boxes(runner, x, spec, lungs)
        except ModelUnavailable as exc:
            unavailable[exc.model_id] = exc.reason
        else:
            ranked = sorted(res.probabilities.items(), key=lambda kv: -kv[1])
            force = in_force(spec) if in_force else threshold_sets.InForce(dict(res.thresholds), NO_DATABASE)
            flagged = postprocess.positives(res.probabilities, force.thresholds)
            doc["findings"] = [
                {
                    "label": label,
                    "probability": p,
                    "positive": flagged[label],
                    "threshold": force.thresholds[label],
                }
                for label, p in ranked
            ]
            doc["thresholds_from"] = force.source
            p_pos = {f["label"]: f["positive"] for f in doc["findings"]}
            doc["score_kind"] = res.score_kind
            # Boxes of every finding, in the order of its probability; `positive` repeats the finding's verdict.
            doc["boxes"] = [
                {"label": label, **box, "positive": p_pos[label]}
                for label, _ in ranked
                for box in boxes.get(label, [])
            ]
            doc["heatmaps_clipped_to_lungs"] = lungs is not None
            ran(spec, analysis.with_total(res.timings_ms, gradcam_and_boxes=cam_ms))

    doc["timings_ms"] = timings | {"total": sum(timings.values())}
    doc["elapsed_ms"] = (time.perf_counter() - t_start) * 1000  # decoding done before; PNG writing included
    return doc


def input_files(paths: Iterable[str | Path], out_dir: Path) -> Iterator[Path]:
    """Files as given, and the files under given folders except those under out_dir (earlier outputs)."""
    out = out_dir.resolve()
    for p in map(Path, paths):
        for f in importer.iter_input_files([p]):
            if p.is_dir() and f.resolve().is_relative_to(out):
                continue
            yield f


def infer_paths(
    runner: Runner,
    paths: Iterable[str | Path],
    out_dir: Path,
    *,
    max_bytes: int,
    picked: Iterable[ModelSpec] = (),
    metadata: dict[str, dict] | None = None,
    in_force: Callable[[ModelSpec], threshold_sets.InForce] | None = None,
) -> Iterator[InferLine]:
    """One InferLine per input file, as each is done. `picked` replaces the default model of its task;
    `metadata` ({file name: fields}, services.sidecar) gives PNG/JPEG files their view position."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen, unavailable = analysis.specs_for(runner.registry, picked)
    stems = Stems()
    for path in input_files(paths, out_dir):
        try:
            img = importer.load_checked(path, max_bytes=max_bytes)
        except importer.FileRejected as exc:
            yield InferLine(file=str(path), status="rejected", reason=exc.reason, code=exc.code)
            continue
        view = None
        if img.header.source_format != "dicom" and metadata:
            # Only the view: it changes what the CTR means; the patient fields stay out of the outputs.
            view = metadata.get(path.name, {}).get("view_position")
        stem = stems.take(path)
        doc = infer_image(runner, chosen, unavailable, img, str(path), out_dir, stem, view, in_force)
        target = out_dir / f"{stem}.json"
        write_atomic(target, (json.dumps(doc, indent=2) + "\n").encode(), mode=OUT_MODE)
        yield InferLine(file=str(path), status="done", out=str(target))
