import streamlit as st

from db import engine as dbe
from db import repo
from screens import _ai_panel, _deps, _keys, _prior, _signin
from screens._canvas import image_canvas, requested_window
from services import annotations, preferences, priors, studies, verdicts
from viewer import dicom_io, geometry, windowing

user = _signin.require_page("review")
ctx = _deps.ctx()
# The open study is in the URL (?study=<id>): a reload keeps it and a link opens it (signed in, as any page).
study_id = st.session_state.get("study_id")
if study_id is None and (wanted := st.query_params.get("study", "")).isdigit():
    study_id = st.session_state["study_id"] = int(wanted)
if study_id is None:
    st.title("Viewer")
    st.info("Open a study from the worklist.")
    st.page_link("screens/worklist.py", label="Go to the worklist", icon=":material/list:")
    st.stop()

with dbe.read(ctx.engine) as s:
    study = repo.get_study(s, study_id)
    if study is None:
        st.error("This study no longer exists.")
        st.stop()
    if st.query_params.get("study") != str(study_id):
        st.query_params["study"] = str(study_id)
    info = {
        "patient_id": study.patient_id,
        "study_uid": study.study_instance_uid,
        "age": study.patient_age_years,
        "sex": study.patient_sex,
        "date": study.study_date,
        "description": study.study_description,
        "status": study.status.value,
        "reviewed_by": study.reviewed_by.username if study.reviewed_by else None,
        "reviewed_by_id": study.reviewed_by_id,
    }
    images = [
        {
            "id": im.id,
            "sha": im.file_sha256,
            "pixel_sha": im.pixel_sha256,
            "name": im.original_filename,
            "view": im.view_position,
            "modality": im.modality,
            # Checked again: images imported before the header checks may hold an unusable spacing.
            "spacing": (im.pixel_spacing_row_mm, im.pixel_spacing_col_mm)
            if dicom_io.plausible_spacing(im.pixel_spacing_row_mm, im.pixel_spacing_col_mm)
            else None,
            "spacing_source": im.pixel_spacing_source,
            "format": im.source_format,
            "warnings": [w for w in im.warnings.split("\n") if w],
        }
        for im in repo.study_images(s, study_id)
    ]
if st.session_state.get("opened_study") != study_id and user.role in ("radiologist", "admin"):
    dbe.write(ctx.engine, lambda s: repo.open_study(s, study_id))
    st.session_state["opened_study"] = study_id
    info["status"] = "in_review" if info["status"] == "new" else info["status"]

flt, sort, desc = st.session_state.get("worklist_query", (repo.WorklistFilter(), "imported", True))


def go(step: int) -> None:
    with dbe.read(ctx.engine) as s:
        target = repo.neighbour_study(s, study_id, flt, sort, desc, step)
    if target is None:
        st.toast("No more studies in the worklist in that direction.")
    else:
        st.session_state["study_id"] = target


title = " · ".join(
    str(x)
    for x in (
        info["patient_id"] or images[0]["name"],
        f"{info['age']} y" if info["age"] is not None else None,
        info["sex"],
        info["date"],
        info["description"],
    )
    if x
)
top = st.columns([1, 1], vertical_alignment="center")
top[0].markdown(f"#### {title}")
reviewed = info["status"] == "reviewed"
with top[1].container(horizontal=True, horizontal_alignment="right", gap="small"):
    st.button("Previous study", key="prev_study", on_click=go, args=(-1,), help="Previous study in the worklist",
              shortcut="Shift+N", icon=":material/arrow_back:")  # fmt: skip
    st.button("Next study", key="next_study", on_click=go, args=(1,), help="Next study in the worklist",
              shortcut="N", icon=":material/arrow_forward:")  # fmt: skip
    if user.role in ("radiologist", "admin"):
        label = "Reopen study" if reviewed else "Mark reviewed"
        mine = not reviewed or studies.may_reopen(user, info["reviewed_by_id"])
        if st.button(label, key="mark_reviewed", type="secondary" if reviewed else "primary", disabled=not mine,
                     help=None if mine else f"{info['reviewed_by']} marked it reviewed: only they or an admin "
                     "may reopen it"):  # fmt: skip
            try:
                studies.set_reviewed(ctx.engine, study_id, user, not reviewed)
            except (studies.ReviewRefused, LookupError, dbe.DatabaseBusy) as exc:
                st.error(_signin.sentence(exc))
            else:
                st.rerun()
    send = _ai_panel.may_send_to_pacs(user) and st.button(
        "Send to PACS", key="send_to_pacs", icon=":material/cloud_upload:",
        help="The final annotations, or else the AI's reading, as DICOM SEG and SR (Research use only)",
    )  # fmt: skip
if send:
    _ai_panel.send_to_pacs(info["study_uid"], user)
st.caption(
    f"Status: **{info['status'].replace('_', ' ')}**"
    + (f" by {info['reviewed_by']}" if info["reviewed_by"] else "")
    + f" · {len(images)} image{'s' * (len(images) != 1)}"
    + " · Keys: **N** / **Shift+N** next / previous study (not while typing in a field)"
)

if len(images) > 1:
    idx = st.radio(
        "Image",
        range(len(images)),
        horizontal=True,
        key=f"img_{study_id}",
        format_func=lambda i: f"{images[i]['view'] or '?'} ({images[i]['name']})",
    )
else:
    idx = 0
im = images[idx]
prior = priors.find(ctx.engine, study_id, im["view"])  # frontal with frontal only
try:
    img = _deps.decoded(im["sha"])
except dicom_io.ImageRejected as exc:
    st.error(f"This image can no longer be decoded: {exc.message}")
    st.stop()

# Window state: None means the header's default (window centre/width or VOI LUT); widgets are re-keyed on
# outside changes (presets, mouse W/L) so they pick up the new values.
win_key, ver_key = f"win_{im['id']}", f"winver_{im['id']}"
presets = _deps.presets(im["sha"])
default = windowing.default_window(img)
window = st.session_state.get(win_key)
ver = st.session_state.get(ver_key, 0)


def set_window(value) -> None:
    st.session_state[win_key] = value
    st.session_state[ver_key] = st.session_state.get(ver_key, 0) + 1


# A mouse W/L drag in the viewer is newer than the widgets when it differs from the last drag seen.
canvas_key, image_key = f"canvas_{im['id']}", str(im["id"])
drag = requested_window(canvas_key, width=img.header.columns, height=img.header.rows, image_id=image_key)
if drag is not None and st.session_state.get(f"wl_seen_{im['id']}") != drag:
    st.session_state[f"wl_seen_{im['id']}"] = drag
    set_window(windowing.Window(*drag))
    window, ver = st.session_state[win_key], st.session_state[ver_key]

view_col, side = st.columns([4, 1.3])
with side:
    st.markdown("**Window / level**")
    preset = st.selectbox(
        "Preset",
        ["Default (header)", *presets],
        key=f"preset_{im['id']}_{ver}",
        index=0 if window is None else None,
        placeholder="custom",
    )
    if preset == "Default (header)" and window is not None:
        set_window(None)
        st.rerun()
    if preset in presets and (window is None or presets[preset] != window):
        set_window(presets[preset])
        st.rerun()
    shown = window or default or next(iter(presets.values()))
    c = st.number_input("Centre", value=float(shown.center), key=f"wc_{im['id']}_{ver}", format="%.1f")
    w = st.number_input(
        "Width", value=float(shown.width), min_value=min(1.0, float(shown.width)), key=f"ww_{im['id']}_{ver}",
        format="%.1f",
    )
    if (c, w) != (shown.center, shown.width):
        set_window(windowing.Window(c, w))  # re-keys the preset box, which then reads "custom"
        st.rerun()
    if window is None and default is None:
        st.caption("Default display uses the header's VOI LUT.")
    invert = st.toggle("Invert", key=f"invert_{im['id']}")
    if st.button("Reset window", key=f"reset_{im['id']}"):
        set_window(None)
        st.rerun()
    st.markdown("**Image**")
    if im["spacing"]:
        st.write(f"Pixel spacing {im['spacing'][0]:.3f} × {im['spacing'][1]:.3f} mm ({im['spacing_source']})")
    else:
        st.warning("No pixel spacing in this image: lengths are in pixels.")
    st.write(
        f"{img.header.columns} × {img.header.rows} px · {img.header.bits_stored}-bit · {im['format'].upper()}"
    )
    # What the import recorded, and what this reading of the file found (for images imported before a check).
    for warning in dict.fromkeys([*im["warnings"], *img.header.warnings]):
        st.warning(warning)
    cmp = _prior.controls(prior, study_id)
    st.divider()
    ai_key = f"ai_on_{study_id}"
    if ai_key not in st.session_state:  # as the reader left it last time, in any study and browser
        st.session_state[ai_key] = preferences.flag(ctx.engine, user.user_id, preferences.AI_OVERLAYS)
    ai_on = st.toggle(
        "AI overlays", key=ai_key, help="Runs the models once per image; Research use only",
        on_change=lambda: preferences.set_flag(ctx.engine, user.user_id, preferences.AI_OVERLAYS,
                                               st.session_state[ai_key]),
    )  # fmt: skip
    layers, shapes, bone_view, ai = [], [], {"mode": "off"}, None
    ai_image = {"id": im["id"], "pixel_sha256": im["pixel_sha"], "file_sha256": im["sha"], "view": im["view"],
                "spacing": im["spacing"]}  # fmt: skip
    if ai_on:
        ai = _ai_panel.load(ai_image, user)
        mine = _ai_panel.my_verdicts(ai_image, user)
        layers, shapes, bone_view = _ai_panel.controls(ai, ai_image, (img.header.rows, img.header.columns), user)

with view_col:
    now_ai, prior_ai = _prior.analyses(cmp, prior, ai, ai_image)
    compare = _prior.pane(cmp, prior, im, img, window, invert, info["date"], now_ai, prior_ai)
    png = _deps.display_png(
        im["sha"], window.center if window else None, window.width if window else None, invert
    )
    lo, hi = _deps.value_range(im["sha"])
    shown = window or default or next(iter(presets.values()))
    canvas_args = dict(width=img.header.columns, height=img.header.rows, pixel_spacing_mm=im["spacing"])
    side_by_side = bone_view["mode"] == "side by side"
    left, right = st.columns(2) if side_by_side else (st.container(), None)
    with left:
        value = image_canvas(
            png, **canvas_args, window=(shown.center, shown.width), value_range=(lo, hi), layers=layers,
            shapes=shapes, key=canvas_key, image_id=image_key, view_height=560 if side_by_side or compare else 720,
            compare=compare,
        )  # fmt: skip
    if right is not None:
        with right:
            image_canvas(bone_view["png"], **canvas_args, key=f"bone_{im['id']}", image_id=f"bone-{image_key}",
                         view_height=560)  # fmt: skip
            st.caption("Bone-suppressed (soft-tissue) image · :orange[Research use only]")
    if ai is not None:
        _ai_panel.quick_verdict(ai, study_id, ai_image, user, mine)

with side:
    measurements = (value or {}).get("measurements") or []
    if measurements:
        st.markdown("**Measurements**")
        for i, m in enumerate(measurements, 1):
            length, unit = geometry.distance((m["x0"], m["y0"]), (m["x1"], m["y1"]), im["spacing"])
            st.write(f"{i}. {length:.1f} {unit}")

if im["format"] == "dicom":
    # Filled only while open: a closed expander's table is still drawn by the browser, on every visit.
    with st.expander("DICOM header", key=f"hdr_open_{im['id']}", on_change="rerun") as header:
        if header.open:
            needle = st.text_input("Filter", key=f"hdr_filter_{im['id']}", placeholder="keyword or tag")
            try:
                rows = [
                    {"Tag": t, "Keyword": k, "VR": vr, "Value": v}
                    for t, k, vr, v in _deps.header_elements(im["sha"])
                    if not needle or needle.lower() in f"{t} {k}".lower()
                ]
            except dicom_io.ImageRejected as exc:
                st.error(f"The header cannot be shown: {exc.message}")
            else:
                st.dataframe(rows, hide_index=True, width="stretch", height=400)

if ai is not None:
    st.divider()
    st.subheader("AI findings · Research use only")
    if ai.findings:
        _ai_panel.findings_table(ai)
        _ai_panel.shadow_scores(ai, ai_image, user)
    _ai_panel.shadow_anatomy(ai, ai_image, user)
    st.markdown("**Your verdicts** (one per AI statement; changes are kept in the audit trail)")
    _ai_panel.verdicts(ai, study_id, ai_image, user, mine)
    _ai_panel.report(ai, study_id, ai_image, user, mine)
_prior.change(now_ai, prior_ai, prior)
if user.role in ("researcher", "admin"):
    with st.expander("Every reader's verdicts and annotations of this image (who and when)"):
        if judged := verdicts.on_image(ctx.engine, im["id"]):
            st.dataframe(
                [{"Reader": j.reader, "Item": j.item_key, "Kind": j.item_kind, "Model": j.model,
                  "Verdict": j.decision, "Reason": j.reason_code or "", "Note": j.reason_text or "",
                  "When": f"{j.at.astimezone():%Y-%m-%d %H:%M}"} for j in judged],
                hide_index=True, width="stretch",
            )  # fmt: skip
        else:
            st.caption("No reader has judged an AI statement on this image.")
        if versions := annotations.on_image(ctx, im["id"]):
            st.dataframe(
                [{"Task": v.extra["task"], "Reader": v.reader, "Status": v.status, "Version": v.id,
                  "Saved": f"{v.created_at.astimezone():%Y-%m-%d %H:%M}",
                  "Present": ", ".join(k for k, x in v.labels.items() if x == "present"),
                  "Uncertain": ", ".join(k for k, x in v.labels.items() if x == "uncertain"),
                  "Boxes": len(v.boxes), "Label map": "yes" if v.label_map_sha256 else ""} for v in versions],
                hide_index=True, width="stretch",
            )  # fmt: skip
        else:
            st.caption("No annotation of this image yet.")
_keys.enable()  # after a click on a checkbox or list, the shortcuts work again
