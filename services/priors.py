"""A study's prior (the same patient's latest earlier study), the AI's change between the two, and the prior's
pictures in the current film's frame: as it is (scaled to fit), aligned on the lungs, or subtracted."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from db import engine as dbe
from db import repo
from inference import postprocess
from services import analysis
from services.context import Context
from viewer import registration

FRONTAL = ("PA", "AP", "AP SUPINE")
LATERAL = ("LL", "RL", "LATERAL", "LAT", "L", "R LATERAL", "L LATERAL")
# inference.postprocess.anatomy_problems about the lungs themselves (the others are about heart and CTR)
LUNG_PROBLEMS = ("lung fields cover", "one lung field", "the smaller lung field")
VIEW_NOT_RECORDED = "the view is not recorded: check that both films are frontal"


@dataclass(frozen=True)
class Prior:
    study_id: int
    study_date: dt.date | None
    days_before: int | None  # current study date minus the prior's
    # the prior film shown: {id, file_sha256, pixel_sha256, view, rows, columns}; None: no comparable prior (note)
    image: dict | None
    others: int  # the patient's other studies besides this one and this prior (later and undated ones too)
    patient_id: str | None = None  # the prior's (the same as the current study's: it is the same patient)
    note: str | None = None  # why there is no comparable prior, or that a view is not recorded

    @property
    def comparable(self) -> bool:
        return self.image is not None


def view_kind(view: str | None) -> str:
    """"frontal", "lateral", "unknown" (not recorded) or "other" (oblique, CT slice, ...)."""
    v = (view or "").strip().upper()
    return "unknown" if not v else "frontal" if v in FRONTAL else "lateral" if v in LATERAL else "other"


def _image_dict(im) -> dict:
    return {"id": im.id, "file_sha256": im.file_sha256, "pixel_sha256": im.pixel_sha256,
            "view": im.view_position, "rows": im.rows, "columns": im.columns}  # fmt: skip


def _comparable_film(images) -> tuple[object | None, bool]:
    """A study's film to compare with a frontal one: its first frontal film, else its first of unrecorded view
    (True: the view is not recorded); a lateral never."""
    for kind in ("frontal", "unknown"):
        if im := next((im for im in images if view_kind(im.view_position) == kind), None):
            return im, kind == "unknown"
    return None, False


def find(engine, study_id: int, current_view: str | None = None) -> Prior | None:
    """The prior to compare the current film (of view `current_view`) with: the patient's latest earlier study
    with a frontal film (or one of unrecorded view, said in `note`), frontal with frontal only. None without an
    earlier study; a Prior with image None and the reason in `note` where none is comparable."""
    with dbe.read(engine) as s:
        study = repo.get_study(s, study_id)
        if study is None or study.study_date is None:
            return None
        linked = repo.patient_studies(s, study_id)  # newest first
        earlier = [x for x in linked if x.study_date is not None and x.study_date < study.study_date]
        if not earlier:
            return None

        def made(prior, image: dict | None, note: str | None) -> Prior:
            return Prior(study_id=prior.id, study_date=prior.study_date,
                         days_before=(study.study_date - prior.study_date).days, image=image,
                         others=len(linked) - 1, patient_id=prior.patient_id, note=note)  # fmt: skip

        if (kind := view_kind(current_view)) in ("lateral", "other"):
            return made(earlier[0], None, f"no comparable prior: this film is a {current_view} view, and priors are "
                                          "compared frontal with frontal")  # fmt: skip
        for prior in earlier:
            film, unrecorded = _comparable_film(repo.study_images(s, prior.id))
            if film is not None:
                note = VIEW_NOT_RECORDED if unrecorded or kind == "unknown" else None
                return made(prior, _image_dict(film), note)
        return made(earlier[0], None, "no comparable prior: the patient's earlier studies have no frontal film")


# --- the AI's change -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    rows: list[dict]  # {"Finding", "Then", "Now", "Change", "Positive then", "Positive now"}
    ctr: dict | None  # {"then", "now", "change"} (a side None where unmeasured or implausible)
    model: str  # the classifier both scores come from
    comparable: bool  # False when the two scores come from different model versions
    note: str | None


def _model_ref(result: dict | None) -> tuple | None:
    return None if result is None else (result["model"]["id"], result["model"]["version"],
                                        result["model"]["weights_sha256"])  # fmt: skip


def ai_change(now: analysis.Analysis, then: analysis.Analysis) -> Change:
    """Each finding's score then and now, sorted by the size of the change, and the CTR then and now. Scores of
    different model versions are not compared: each is shown, the change is not."""
    comparable = _model_ref(now.findings) == _model_ref(then.findings) and now.findings is not None
    rows = []
    if now.findings is not None:
        p_then = (then.findings or {}).get("probabilities", {}) if comparable else {}
        # Both films judged by today's operating points ("No Finding" never beside a positive finding).
        pos_now = postprocess.positives(now.findings["probabilities"], now.thresholds)
        pos_then = postprocess.positives(p_then, now.thresholds)
        for label, p in now.findings["probabilities"].items():
            old = p_then.get(label)
            thr = now.thresholds.get(label)
            rows.append({
                "Finding": label,
                "Then": old,
                "Now": float(p),
                "Change": None if old is None else float(p) - float(old),
                "Positive then": None if old is None or thr is None else pos_then[label],
                "Positive now": None if thr is None else pos_now[label],
            })  # fmt: skip
        rows.sort(key=lambda r: -abs(r["Change"] or 0.0))
    ctr_now, ctr_then = analysis.ctr_shown(now.anatomy), analysis.ctr_shown(then.anatomy)
    ctr = None
    if ctr_now or ctr_then:
        a = ctr_then["ratio"] if ctr_then else None
        b = ctr_now["ratio"] if ctr_now else None
        ctr = {"then": a, "now": b, "change": None if a is None or b is None else b - a}
    note = None
    if not comparable and now.findings is not None:
        note = "The prior was scored by another model version: its scores are not compared."
    model = "" if now.findings is None else f"{now.findings['model']['id']} {now.findings['model']['version']}"
    return Change(rows, ctr, model, comparable, note)


# --- alignment and pictures -------------------------------------------------------------------------------------
class LabelMapUnreadable(Exception):
    """A stored AI label map is missing or cannot be decoded."""


def _label_map_at(path: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        lm = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    except OSError as exc:
        raise LabelMapUnreadable(f"the stored AI outline is missing ({type(exc).__name__})") from exc
    if lm is None or lm.ndim != 2:
        raise LabelMapUnreadable("the stored AI outline cannot be decoded")
    if lm.shape != shape:
        lm = cv2.resize(lm, shape[::-1], interpolation=cv2.INTER_NEAREST)
    return lm


def mask_at(path: str, shape: tuple[int, int]) -> np.ndarray:
    """The lungs of a stored label map (its path) at a film's size (rows, columns); LabelMapUnreadable."""
    return _label_map_at(path, shape) == analysis.LUNGS


def _unusable(result: analysis.Analysis) -> str | None:
    if result.anatomy is None:
        return "no AI lung outline (the anatomy model is unavailable)"
    if result.anatomy.get("inverted_grey_scale"):
        return "the film is stored with inverted grey levels: its AI lung outline is not usable"
    # Only the lungs' own problems matter here: a heart outline or CTR out of range leaves the lungs usable.
    if lung := [p for p in result.anatomy.get("problems", []) if p.startswith(LUNG_PROBLEMS)]:
        return f"an implausible AI lung outline ({lung[0]})"
    return None


def align(
    ctx: Context, now: analysis.Analysis, then: analysis.Analysis, now_shape, then_shape
) -> registration.Registration:
    """The prior aligned to the current film on the AI's lung masks (the heart telling left from right), or
    refused with the reason."""
    for name, result in (("current", now), ("prior", then)):
        if (why := _unusable(result)) is not None:
            return registration.Registration(None, None, None, f"the {name} film: {why}")
    return _align_maps(
        str(ctx.store.path_for(now.anatomy["label_map"])), str(ctx.store.path_for(then.anatomy["label_map"])),
        tuple(now_shape), tuple(then_shape),
    )  # fmt: skip


@lru_cache(maxsize=64)
def _align_maps(now_path: str, then_path: str, now_shape, then_shape) -> registration.Registration:
    # Keyed by content-addressed paths: a cached alignment always belongs to these two label maps.
    maps = []
    for name, path, shape in (("current", now_path, now_shape), ("prior", then_path, then_shape)):
        try:
            maps.append(_label_map_at(path, shape))
        except LabelMapUnreadable as exc:
            return registration.Registration(None, None, None, f"the {name} film: {exc}")
    (now_lm, then_lm) = maps
    return registration.register(now_lm == analysis.LUNGS, then_lm == analysis.LUNGS,
                                 now_lm == analysis.HEART, then_lm == analysis.HEART)  # fmt: skip


def prior_picture(prior8: np.ndarray, shape: tuple[int, int], matrix: np.ndarray | None) -> np.ndarray:
    """The prior's 8-bit picture in the current film's frame: aligned with `matrix`, else scaled to fit."""
    if matrix is None:
        return registration.fit_into(prior8, shape)
    return registration.warp_to_current(prior8, matrix, shape)


def difference_picture(
    current8: np.ndarray, prior8: np.ndarray, matrix: np.ndarray, current_lungs: np.ndarray
) -> np.ndarray:
    """current − aligned prior (registration.difference) at the current film's size."""
    warped = registration.warp_to_current(prior8, matrix, current8.shape)
    valid = registration.coverage(matrix, prior8.shape, current8.shape)
    return registration.difference(current8, warped, current_lungs, valid)
