"""Annotate: the reader's queue of a labelling task. "Next" opens the image that needs them; boxes and the label map
are edited in the viewer (annotate.js), image-level findings beside it; every edit is saved as a draft version at
once (a reload or a dropped connection loses nothing), Submit ends the reading. Adjudicators compare the readers
and set the final labels."""

import uuid

import numpy as np
import streamlit as st

from db import engine as dbe
from db.engine import DatabaseBusy
from db.models import Image
from screens import _deps, _signin
from screens._canvas import image_canvas, last_value, requested_window
from screens._table import plain
from services import annotations, labelling, vocabulary
from services.annotations import AnnotationError, NotAllowed
from viewer import dicom_io

user = _signin.require_page("annotate")
ctx = _deps.ctx()
st.title("Annotate")
COLOURS = {"lungs": "#2196f3", "heart": "#e91e63", "clavicles": "#4caf50"}
READER_COLOURS = ["#00e5ff", "#ffeb3b", "#ff5722", "#8bc34a", "#ba68c8"]
VALUES = ["present", "absent", "uncertain"]

tasks = labelling.tasks_of(ctx, user.user_id)
if not tasks:
    st.info("You are not a reader of any labelling task yet. Admins and researchers make tasks on the Labelling tasks page.")
    st.stop()
task = st.selectbox("Task", tasks, format_func=lambda t: f"{t.name} ({t.n_images} image{'s' * (t.n_images != 1)})", key="ann_task")
p = labelling.progress(ctx, task.id)
st.caption(
    f"{p.done} of {p.images} images done · finals {p.finals} · you submitted {p.per_reader.get(user.username, 0)} · "
    f"{task.readers_per_image} reader(s) per image{' · blinded' if task.blinded else ''} · "
    f"order: {labelling.ORDERS[task.queue_order]}"
)
st.progress(p.done / p.images if p.images else 0.0)
adjudicator = task.readers.get(user.username, False) or user.role == "admin"
mode = st.segmented_control("Mode", ["Read", "Adjudicate"], default="Read", key="ann_mode") if adjudicator else "Read"


def image_row(image_id: int) -> dict:
    with dbe.read(ctx.engine) as s:
        im = s.get(Image, image_id)
        return {
            "id": im.id, "file_sha256": im.file_sha256, "pixel_sha256": im.pixel_sha256, "name": im.original_filename,
            "rows": im.rows, "columns": im.columns, "view": im.view_position,
            "spacing": (im.pixel_spacing_row_mm, im.pixel_spacing_col_mm)
            if dicom_io.plausible_spacing(im.pixel_spacing_row_mm, im.pixel_spacing_col_mm) else None,
        }  # fmt: skip


def structures() -> list[dict]:
    return [{"value": v, "name": n, "color": COLOURS[n]} for v, n in vocabulary.STRUCTURES.items() if n in task.structures]


def mask_png(sha: str | None) -> bytes | None:
    return _deps.stored_bytes(sha) if sha else None


def labels_form(key: str, current: dict[str, str]) -> dict[str, str]:
    """A present / absent / uncertain choice per finding of the schema (unset until chosen)."""
    out = {}
    for finding in [*task.findings, vocabulary.NO_FINDING]:
        choice = st.segmented_control(
            finding.replace("_", " "), VALUES, default=current.get(finding), key=f"{key}_{finding}"
        )  # fmt: skip
        if choice:
            out[finding] = choice
    return out


def editor(im: dict, key: str, state: dict, shapes: list[dict] | None = None, backup: bool = True) -> dict | None:
    # Windowing as in the viewer: a W/L drag re-renders the picture from the stored values at full bit depth.
    image_id = f"annotate-{im['id']}"
    window = requested_window(key, width=im["columns"], height=im["rows"], image_id=image_id)
    png = _deps.display_png(im["file_sha256"], *(window or (None, None)), False)
    shown = window or _deps.default_window(im["file_sha256"])
    value = image_canvas(
        png, width=im["columns"], height=im["rows"], pixel_spacing_mm=im["spacing"], key=key,
        image_id=image_id, shapes=shapes or [], window=shown,
        value_range=_deps.value_range(im["file_sha256"]),
        annotate={"token": state["token"], "labels": list(task.boxes), "structures": structures(),
                  "boxes": state["boxes"], "mask": mask_png(state["mask"]), "acked_seq": state["seq"],
                  "version": state["parent"],
                  "backup_key": f"cxr-annotate:{user.user_id}:{task.id}:{im['id']}" if backup else None},
    )  # fmt: skip
    st.caption("Box (B), Brush (R), Eraser (E), Polygon (G); 1-9 pick the label or structure; [ ] brush size; "
               "Ctrl+Z / Ctrl+Y undo and redo; wheel to zoom, middle button to pan.")  # fmt: skip
    return (value or {}).get("annotation")


def open_state(im_id: int, version: annotations.Version | None) -> dict:
    """The editing session of an image: a fresh token reloads the browser's editor from this version."""
    return {
        "token": uuid.uuid4().hex, "parent": version.id if version else None, "seq": 0,
        "boxes": version.boxes if version else [], "mask": version.label_map_sha256 if version else None,
        "labels": dict(version.labels) if version else {},
    }  # fmt: skip


def _blank(im: dict) -> np.ndarray:
    return np.zeros((im["rows"], im["columns"]), np.uint8)


def say(saved: annotations.Saved, what: str) -> None:
    if saved.conflict:
        st.warning(f"{what}. Note: this image was {saved.conflict}; both versions are kept.")


# --- reading --------------------------------------------------------------------------------------------------------
if mode == "Read":
    slot = f"ann_image_{task.id}"
    if st.session_state.get(slot) is None:
        st.session_state[slot] = labelling.next_image(ctx, task.id, user.user_id)
    image_id = st.session_state[slot]
    if msg := st.session_state.pop("ann_msg", None):
        st.success(msg)
    if image_id is None:
        st.success("Nothing left for you in this task: every image has the readers it needs.")
        st.stop()
    im = image_row(image_id)
    skey = f"ann_state_{task.id}_{image_id}"
    if skey not in st.session_state:
        st.session_state[skey] = open_state(image_id, annotations.head(ctx, image_id, task.id, user.user_id))
    state = st.session_state[skey]
    st.subheader(plain(im["name"]))
    saved_line = st.empty()  # filled at the end of the run, after this run's autosave

    c1, c2, _ = st.columns([1.3, 1, 3])
    if c1.button("Start from the AI proposal", help="Replaces your draft (kept in the history) with what the AI "
                 "says: findings at the operating points in force, boxes of positive findings, the anatomy outlines. "
                 "Research use only."):  # fmt: skip
        try:
            with st.spinner("Running the AI models…"):
                labels, boxes, lm, prediction_id = annotations.ai_proposal(
                    ctx, _deps.runner(), im, task.findings, task.structures
                )
            saved = annotations.save(
                ctx, user, image_id, task_id=task.id, labels=labels, boxes=boxes,
                label_map=lm if lm is not None else _blank(im), parent_id=state["parent"],
                proposal_prediction_id=prediction_id, note="AI proposal",
            )  # fmt: skip
        except (AnnotationError, NotAllowed, DatabaseBusy) as exc:
            st.error(str(exc))
        except dicom_io.ImageRejected as exc:
            st.error(f"The AI cannot read this image: {exc.message}")
        else:
            say(saved, "The AI proposal is your draft")
            st.session_state[skey] = open_state(image_id, annotations.head(ctx, image_id, task.id, user.user_id))
            st.rerun()
    if c2.button("Start empty", help="A new empty draft (the old one stays in the history)"):
        try:
            annotations.save(ctx, user, image_id, task_id=task.id, labels={}, boxes=[], polygons=[],
                             label_map=_blank(im), parent_id=state["parent"])  # fmt: skip
        except (AnnotationError, NotAllowed, DatabaseBusy) as exc:
            st.error(str(exc))
        else:
            st.session_state[skey] = open_state(image_id, annotations.head(ctx, image_id, task.id, user.user_id))
            st.rerun()

    # Autosave before drawing: the browser's newest edits (the component's value) and findings (the choices'
    # values) are in the session already, so the editor is drawn knowing they are saved.
    canvas_key, labels_key = f"ann_canvas_{task.id}_{image_id}", f"ann_lab_{state['token']}"
    edit = (last_value(canvas_key) or {}).get("annotation")
    labels = {f: v for f in [*task.findings, vocabulary.NO_FINDING]
              if (v := st.session_state.get(f"{labels_key}_{f}", state["labels"].get(f)))}  # fmt: skip
    try:
        changes = {}
        if edit and edit.get("token") == state["token"] and edit["seq"] > state["seq"]:
            changes["boxes"] = edit["boxes"]
            if edit.get("mask"):
                changes["label_map"] = annotations.decode_mask(edit["mask"], im["rows"], im["columns"])
        if labels != state["labels"]:
            changes["labels"] = labels
        if changes:  # a draft per change, never overwriting the last one
            saved = annotations.save(ctx, user, image_id, task_id=task.id, parent_id=state["parent"], **changes)
            state["parent"], state["labels"] = saved.version_id, labels
            if "boxes" in changes:
                state["seq"] = edit["seq"]
            say(saved, "Draft saved")
            st.toast("Draft saved", icon=":material/save:")
    except (AnnotationError, NotAllowed, DatabaseBusy) as exc:
        st.error(f"Not saved: {exc}")
    view_col, side = st.columns([3, 1.2])
    with view_col:
        editor(im, canvas_key, state)
    with side:
        st.markdown("**Findings on this image**")
        labels_form(labels_key, state["labels"])
    with side:
        if st.button("Submit", type="primary", help="Ends your reading of this image; the queue moves on"):
            try:
                saved = annotations.save(ctx, user, image_id, task_id=task.id, status="submitted",
                                         parent_id=state["parent"])  # fmt: skip
            except (AnnotationError, NotAllowed, DatabaseBusy) as exc:
                st.error(str(exc))
            else:
                st.session_state.pop(skey, None)
                st.session_state[slot] = labelling.next_image(ctx, task.id, user.user_id)
                st.session_state["ann_msg"] = f"Submitted {plain(im['name'])}" + (f" ({saved.conflict})" if saved.conflict else "")
                st.rerun()
        head = annotations.head(ctx, image_id, task.id, user.user_id)
        saved_line.caption(f"Your version: {head.status} #{head.id}, saved {head.created_at.astimezone():%H:%M:%S}"
                           if head else "Not yet saved: your first edit saves a draft.")  # fmt: skip
        if task.blinded and not labelling.closed(ctx, task.id, image_id):
            st.caption("Blinded: the other readers' work shows once the image is closed.")
        else:
            others = [v for v in labelling.visible_lines(ctx, task.id, image_id, user) if v.reader != user.username]
            for v in others:
                st.caption(f"{v.reader} ({v.status}): " + ", ".join(f"{k} {x}" for k, x in v.labels.items() if x != "absent"))


# --- adjudication ---------------------------------------------------------------------------------------------------
if mode == "Adjudicate":
    lines = annotations.heads(ctx, task.id)
    readers_of: dict[int, list] = {}
    finals = {v.image_id: v for v in lines if v.status == "final"}
    for v in lines:
        if v.status == "submitted":
            readers_of.setdefault(v.image_id, []).append(v)
    ready = sorted(readers_of, key=lambda i: (i in finals, -len(readers_of[i]), i))
    if not ready:
        st.info("No image of this task has a submitted reading yet.")
        st.stop()
    names = {i: image_row(i)["name"] for i in ready}
    image_id = st.selectbox("Image", ready, key="adj_image", format_func=lambda i: (
        f"{names[i]} · {len(readers_of[i])} reading(s)" + (" · final set" if i in finals else "")))  # fmt: skip
    im = image_row(image_id)
    versions = readers_of[image_id]
    ai = annotations.ai_scores(ctx, im["pixel_sha256"])  # stored results only: adjudication runs no model
    table = [{"finding": f, **{v.reader: v.labels.get(f, "") for v in versions},
              **({f"AI {ai[0]}": round(ai[1][f], 3) if f in ai[1] else None} if ai else {}),
              "final": finals[image_id].labels.get(f, "") if image_id in finals else ""}
             for f in [*task.findings, vocabulary.NO_FINDING]]  # fmt: skip
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption(f"AI scores: {ai[0]}, Research use only." if ai else "No stored AI result for this image (a reader's "
               "'Start from the AI proposal' stores one).")  # fmt: skip
    shapes = [
        {"type": "rect", "x0": b["x"], "y0": b["y"], "x1": b["x"] + b["w"], "y1": b["y"] + b["h"],
         "color": READER_COLOURS[n % len(READER_COLOURS)], "label": f"{v.reader}: {b['label']}"}
        for n, v in enumerate(versions) for b in v.boxes
    ]  # fmt: skip
    base_names = [v.reader for v in versions] + (["final"] if image_id in finals else [])
    start = st.radio("Start the final from", base_names, horizontal=True, key=f"adj_from_{image_id}")
    base = finals[image_id] if start == "final" else next(v for v in versions if v.reader == start)
    skey = f"adj_state_{image_id}_{base.id}"
    if skey not in st.session_state:
        st.session_state[skey] = open_state(image_id, base)
        # the final this adjudication edits from: another adjudicator's newer final is then a named conflict
        st.session_state[skey]["final_parent"] = finals[image_id].id if image_id in finals else None
    state = st.session_state[skey]
    view_col, side = st.columns([3, 1.2])
    with view_col:
        edit = editor(im, f"adj_canvas_{image_id}", state, shapes=shapes, backup=False)
        st.caption("Coloured outlines: each reader's boxes; orange: the final you are editing.")
    with side:
        st.markdown("**Final findings**")
        labels = labels_form(f"adj_lab_{state['token']}", state["labels"])
        if st.button("Set final", type="primary"):
            kw = {"boxes": edit["boxes"] if edit and edit.get("token") == state["token"] else state["boxes"],
                  "labels": labels, "polygons": base.polygons}  # fmt: skip
            try:
                if edit and edit.get("token") == state["token"] and edit.get("mask"):
                    kw["label_map"] = annotations.decode_mask(edit["mask"], im["rows"], im["columns"])
                elif state["mask"]:
                    kw["label_map"] = annotations.load_label_map(ctx, state["mask"])
                else:  # the reader drew none: the final has none either (not an earlier final's)
                    kw["label_map"] = _blank(im)
                saved = annotations.save(
                    ctx, user, image_id, task_id=task.id, status="final", note=f"from {start}",
                    parent_id=state["final_parent"], **kw,
                )  # fmt: skip
            except (AnnotationError, NotAllowed, DatabaseBusy) as exc:
                st.error(str(exc))
            else:
                say(saved, "Final saved")
                state["final_parent"] = saved.version_id
                st.success(f"Final set by {user.username} (version {saved.version_id}).")
st.caption("AI proposals: Research use only, not for clinical decisions.")
