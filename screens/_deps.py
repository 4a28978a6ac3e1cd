"""Every st.cache_* of the app lives here, so what is cached and for how long is visible in one place."""

from __future__ import annotations

import numpy as np
import streamlit as st

from inference.registry import Registry
from inference.runner import Runner
from services import (
    agreement_report,
    analysis,
    context,
    eval_metrics,
    eval_sets,
    failure_cases,
    priors,
    shadow,
    studies,
)
from viewer import dicom_io, export, overlays, windowing


@st.cache_resource(show_spinner=False)
def ctx() -> context.Context:
    return context.build()


@st.cache_resource(max_entries=6, show_spinner="Decoding image…")
def decoded(file_sha256: str) -> dicom_io.DecodedImage:
    """Decoded pixels per stored file (read-only: render() never writes into them)."""
    return dicom_io.load(ctx().store.path_for(file_sha256))


@st.cache_data(max_entries=24, show_spinner=False)
def display_png(file_sha256: str, center: float | None, width: float | None, invert: bool) -> bytes:
    return studies.display_png(decoded(file_sha256), center, width, invert)


def _rendered(file_sha256: str, window: tuple[float, float] | None, invert: bool) -> np.ndarray:
    return windowing.render(decoded(file_sha256), windowing.Window(*window) if window else None, invert)


@st.cache_data(max_entries=8, show_spinner=False)
def prior_png(
    prior_sha: str, shape: tuple[int, int], window: tuple[float, float] | None, invert: bool,
    matrix: tuple[tuple[float, ...], ...] | None,
) -> bytes:
    """The prior as displayed (window None: its default), in the current film's frame: aligned by `matrix`
    (current pixel -> prior pixel), else scaled to fit."""
    aligned = None if matrix is None else np.array(matrix)
    return export.png_bytes(priors.prior_picture(_rendered(prior_sha, window, invert), shape, aligned))


@st.cache_data(max_entries=8, show_spinner="Subtracting the aligned prior…")
def difference_png(
    current_sha: str, prior_sha: str, invert: bool, matrix: tuple[tuple[float, ...], ...], label_map_key: str
) -> bytes:
    """Of the default displays, whatever the reader's window: a narrow window clips both films, and the
    difference of clipped pictures shows the clipping, not the change."""
    current = _rendered(current_sha, None, invert)
    lungs = priors.mask_at(str(ctx().store.path_for(label_map_key)), current.shape)
    diff = priors.difference_picture(current, _rendered(prior_sha, None, invert), np.array(matrix), lungs)
    return export.png_bytes(diff)


@st.cache_data(max_entries=12, show_spinner=False)
def header_elements(file_sha256: str) -> list[tuple[str, str, str, str]]:
    return dicom_io.header_elements(ctx().store.path_for(file_sha256))


@st.cache_data(max_entries=24, show_spinner=False)
def value_range(file_sha256: str) -> tuple[float, float]:
    return studies.value_range(decoded(file_sha256))


@st.cache_data(max_entries=24, show_spinner=False)
def presets(file_sha256: str) -> dict[str, windowing.Window]:
    """The image's named windows: percentiles of its values, computed once per image, not on every run of the viewer."""
    return windowing.presets(decoded(file_sha256))


@st.cache_data(max_entries=24, show_spinner=False)
def default_window(file_sha256: str) -> tuple[float, float]:
    """(centre, width) of the default display, or of the full-range preset where a VOI LUT is the default: where
    a W/L drag starts from."""
    w = windowing.default_window(decoded(file_sha256)) or next(iter(presets(file_sha256).values()))
    return float(w.center), float(w.width)


@st.cache_resource(show_spinner=False)
def registry() -> Registry:
    """One registry per process (it rescans trained-model folders and re-hashes changed weights by itself)."""
    return Registry(ctx().settings.models_dir)


@st.cache_resource(show_spinner="Loading the AI models…")
def runner() -> Runner:
    """Models load once per process (keyed inside by id, version, sha256 and device)."""
    return Runner(registry(), ctx().settings.device)


@st.cache_data(max_entries=64, show_spinner=False)
def stored_bytes(key: str) -> bytes:
    return ctx().store.path_for(key).read_bytes()


@st.cache_data(max_entries=16, show_spinner=False)
def anatomy_png(label_map_key: str, style: str) -> bytes:
    return export.png_bytes(overlays.anatomy_layer(analysis.stored_png(ctx(), label_map_key), style))


@st.cache_data(max_entries=16, show_spinner=False)
def grey_rgba_png(key: str) -> bytes:
    return export.png_bytes(overlays.grey_layer(analysis.stored_png(ctx(), key)))


@st.cache_data(max_entries=32, show_spinner=False)
def heatmap_png(key: str, colourmap: str) -> bytes:
    heat = analysis.stored_png(ctx(), key).astype("float32") / 255.0
    return export.png_bytes(overlays.heatmap_layer(heat, colourmap))


@st.cache_data(max_entries=16, show_spinner="Computing agreement…")
def agreement(task_id: int, readers: tuple[str, ...], stamp: tuple[int, int]) -> dict:
    """A task's agreement report; `stamp` (its versions, newest version id) renews it whenever a reader saves."""
    return agreement_report.report(ctx(), task_id, list(readers))


@st.cache_resource(max_entries=8, show_spinner="Reading the results…")
def eval_scored(set_id: int, ref: str, stamp: tuple) -> eval_metrics.Scored:
    """A version's stored scores on an evaluation set; `stamp` (eval_runs.results_stamp: its finished runs and
    installed weights) renews it after a run or a change of weights."""
    return eval_metrics.scored(ctx(), registry(), set_id, ref)


@st.cache_data(max_entries=64, show_spinner="Computing curves and intervals…")
def eval_finding(set_id: int, ref: str, stamp: tuple, finding: str, threshold: float | None,
                 n_boot: int) -> dict:  # fmt: skip
    return eval_metrics.finding_report(eval_scored(set_id, ref, stamp), finding, threshold, n_boot)


@st.cache_data(max_entries=16, show_spinner="Computing the summary…")
def eval_summary(set_id: int, ref: str, stamp: tuple, thresholds: tuple, n_boot: int) -> list[dict]:
    return eval_metrics.summary_rows(eval_scored(set_id, ref, stamp), dict(thresholds), n_boot)


@st.cache_data(max_entries=256, ttl=3600, show_spinner=False)
def failure_tile(set_id: int, item_id: int, ref: str, weights_sha256: str,
                 finding: str) -> failure_cases.Tile:  # fmt: skip
    """A gallery tile of the Failure cases page (display-sized JPEG with the finding's heatmap, or why none);
    keyed by the set item, the model version with its weights sha256 (new weights under the same id@version
    are a new key, not an hour of old heatmaps) and the finding; an hour at most, so that a file that went or
    came back is seen."""
    spec = registry().resolve(ref)
    item = next(it for it in eval_sets.items(ctx(), set_id) if it.id == item_id)
    return failure_cases.tile(ctx(), runner(), spec, eval_sets.get(ctx(), set_id), item, finding)


SHADOW_SIDE = 768  # the candidate's and the active outlines are shown side by side: no need for full resolution


def _weights(ref: str) -> str | None:
    try:
        return registry().resolve(ref).weights_sha256
    except KeyError:  # gone since the page listed it: the service says so
        return None


def shadow_scores(image: dict, ref: str, role: str) -> dict:
    """A candidate's scores on a stored image, computed once per image, candidate weights and role (reruns of
    the review page reuse them); the role is checked by the service, whose refusals are never cached."""
    return _shadow_scores(image["id"], image["file_sha256"], ref, _weights(ref), role, image)


@st.cache_data(max_entries=16, show_spinner="Running the candidate…")
def _shadow_scores(image_id: int, file_sha256: str, ref: str, weights: str | None, role: str, _image: dict) -> dict:
    return shadow.candidate_scores(ctx(), runner(), _image, ref, role)


def shadow_anatomy(image: dict, ref: str, role: str, active: dict) -> dict:
    """A segmentation candidate beside the active outlines (shadow.candidate_anatomy), once per image, candidate
    weights, active label map and role, with both outlines drawn over the radiograph at display size."""
    return _shadow_anatomy(image["id"], image["file_sha256"], ref, _weights(ref), role, active["label_map"], image,
                           active)  # fmt: skip


@st.cache_data(max_entries=8, show_spinner="Running the candidate…")
def _shadow_anatomy(image_id: int, file_sha256: str, ref: str, weights: str | None, role: str, active_map: str,
                    _image: dict, _active: dict) -> dict:  # fmt: skip
    cand = shadow.candidate_anatomy(ctx(), runner(), _image, ref, role, _active)
    h, w = cand["image"].shape
    scale = min(1.0, SHADOW_SIDE / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    grey = overlays.resize_to(cand["image"], size)
    pictures = {name: overlays.over_grey(grey, overlays.anatomy_layer(overlays.resize_to(cand[key], size, nearest=True)))
                for name, key in (("active", "active_label_map"), ("candidate", "label_map"))}  # fmt: skip
    return {k: v for k, v in cand.items() if k not in ("image", "label_map", "active_label_map")} | pictures
