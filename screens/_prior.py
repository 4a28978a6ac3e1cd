"""The viewer's prior: the compare switch, the prior's pane beside the current film (as it is, aligned on the
lungs, or subtracted) and the AI's change since the prior. Alignment uses the AI's lung outlines: Research use
only, with the anatomy model named."""

from __future__ import annotations

import streamlit as st

from inference.types import RESEARCH_USE
from screens import _ai_panel, _deps
from services import analysis, priors
from viewer import dicom_io

MODES = ["side by side", "aligned", "difference"]
# What a prior whose stored film (or AI outline) is gone or undecodable raises: the prior pane says so, the rest
# of the page (the current film, its verdicts and report) renders.
UNREADABLE = (FileNotFoundError, dicom_io.ImageRejected, priors.LabelMapUnreadable)


def _cannot_show(exc: Exception) -> None:
    why = exc.message if isinstance(exc, dicom_io.ImageRejected) else (
        "its stored file is missing" if isinstance(exc, FileNotFoundError) else str(exc))  # fmt: skip
    st.error(f"The prior cannot be shown: {why}.")


def controls(prior: priors.Prior | None, study_id: int) -> dict | None:
    """The side panel's Prior block; returns {"mode", "notes"} while the reader compares, else None. `notes` holds
    the comparison's progress and messages: here, not above the viewer, which would be built anew (and the
    reader's zoom lost) by an element appearing before it."""
    if prior is None:
        return None
    st.markdown("**Prior**")
    n = prior.others
    more = f" · {n} more stud{'y' if n == 1 else 'ies'} of this patient" if n else ""
    days = f"{prior.days_before} day{'s' * (prior.days_before != 1)}"
    if not prior.comparable:  # a lateral on either side: nothing to put beside this film
        st.caption(f"Latest earlier study {prior.study_date} · {days} before this study{more}")
        st.info(prior.note[0].upper() + prior.note[1:] + ".")
        return None
    on = st.toggle("Compare with prior", key=f"prior_on_{study_id}", help="Shows the patient's latest earlier "
                   "study beside this one; zoom, pan and window move both")  # fmt: skip
    st.caption(f"{prior.study_date} · {days} before this study{more}")
    if prior.note:
        st.caption(f"Prior: {prior.note}")
    if not on:
        return None
    mode = st.radio("Prior view", MODES, key=f"prior_mode_{study_id}",
                    help="aligned and difference register the prior on the AI's lung outlines (the models run "
                    "once per film)")  # fmt: skip
    return {"mode": mode, "notes": st.container()}


def _prior_image(prior: priors.Prior) -> dict:
    return {"id": prior.image["id"], "pixel_sha256": prior.image["pixel_sha256"],
            "file_sha256": prior.image["file_sha256"], "view": prior.image["view"], "spacing": None}  # fmt: skip


def analyses(cmp: dict | None, prior: priors.Prior | None, now: analysis.Analysis | None, ai_image: dict):
    """(current, prior) AI results where the comparison needs them (alignment, or the AI switched on), else
    (now, None); the models run here, with progress, for a film that has none stored."""
    if cmp is None or prior is None or (cmp["mode"] == "side by side" and now is None):
        return now, None
    with cmp["notes"]:
        now = now or _ai_panel.load(ai_image)
        try:
            return now, _ai_panel.load(_prior_image(prior))
        except UNREADABLE as exc:
            _cannot_show(exc)
            cmp["failed"] = True
            return now, None


def pane(
    cmp: dict | None, prior: priors.Prior | None, im: dict, img, window, invert: bool, date,
    now: analysis.Analysis | None, then: analysis.Analysis | None,
) -> dict | None:
    """The canvas's compare pane, or None. A prior that cannot be aligned is shown as it is, with the reason."""
    if cmp is None or prior is None or cmp.get("failed"):
        return None
    with cmp["notes"]:
        try:
            return _pane(cmp, prior, im, img, window, invert, date, now, then)
        except UNREADABLE as exc:
            _cannot_show(exc)
            return None


def _pane(cmp, prior, im, img, window, invert, date, now, then) -> dict:
    shape = (img.header.rows, img.header.columns)
    prior_img = _deps.decoded(prior.image["file_sha256"])
    # One window for both where their values mean the same (same format and depth); else each its default.
    same_scale = (prior_img.header.source_format, prior_img.header.bits_stored) == (
        img.header.source_format, img.header.bits_stored)  # fmt: skip
    win = (window.center, window.width) if window else None
    prior_win = win if same_scale else None
    who = f" · Patient ID {prior.patient_id}" if prior.patient_id else ""  # the same patient as the current film
    matrix, caption = None, f"Prior {prior.study_date} · as acquired, scaled to fit{who}"
    if cmp["mode"] != "side by side":
        reg = priors.align(_deps.ctx(), now, then, shape, (prior.image["rows"], prior.image["columns"]))
        if not reg.ok:
            st.warning(f"The prior is not aligned: {reg.reason}. The two films are shown side by side, unaligned.")
        else:
            matrix = tuple(map(tuple, reg.matrix.tolist()))
            caption = f"Prior {prior.study_date} · aligned on the lungs (overlap {reg.iou:.0%}){who}"
    current_caption = f"Current {date}" if date else "Current"
    if matrix is not None and cmp["mode"] == "difference":
        png = _deps.difference_png(im["sha"], prior.image["file_sha256"], invert, matrix, now.anatomy["label_map"])
        st.caption(
            "Difference = current − aligned prior at their default windows, grey levels matched inside the "
            f"lungs: brighter = denser now, darker = clearer now. Aligned on lungs from {_ai_panel.provenance(now.anatomy)} · "
            f":orange[{RESEARCH_USE}]"
        )
        return {"png": png, "caption": f"Current − prior {prior.study_date}{who}", "current_caption": current_caption,
                "windowed": False}  # fmt: skip
    if matrix is not None:
        st.caption(f"Aligned on lungs from {_ai_panel.provenance(now.anatomy)} · :orange[{RESEARCH_USE}]")
    png = _deps.prior_png(prior.image["file_sha256"], shape, prior_win, invert, matrix)
    return {"png": png, "caption": caption, "current_caption": current_caption, "windowed": same_scale}


def change(now: analysis.Analysis | None, then: analysis.Analysis | None, prior: priors.Prior | None) -> None:
    """The AI's change since the prior: each finding's score then and now, and the CTR."""
    if prior is None or now is None or then is None:
        return
    c = priors.ai_change(now, then)
    st.subheader(f"Change since the prior ({prior.study_date}) · Research use only")
    if c.ctr:
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        delta = "" if c.ctr["change"] is None else f" ({c.ctr['change']:+.2f})"
        st.write(f"Cardiothoracic ratio: then {fmt(c.ctr['then'])}, now {fmt(c.ctr['now'])}{delta}")
    if c.rows:
        st.dataframe(
            c.rows, hide_index=True, width="stretch", key=f"prior_change_{prior.study_id}",
            column_config={"Then": st.column_config.NumberColumn(format="%.3f"),
                           "Now": st.column_config.NumberColumn(format="%.3f"),
                           "Change": st.column_config.NumberColumn(format="%+.3f")},
        )  # fmt: skip
    if c.note:
        st.warning(c.note)
    models = "; ".join(_ai_panel.model_text(m) for m in now.models)
    st.caption(f"Scores then and now from {models}; positive = at or over the operating point in force today · "
               f"{RESEARCH_USE}")
