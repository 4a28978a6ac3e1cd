"""The viewer's AI part: run or fetch the results, the overlay controls, verdicts and the draft report.
Everything AI here is labelled "Research use only" and carries model id, version and weights sha256."""

from __future__ import annotations

import streamlit as st

from db import engine as dbe
from db import repo
from inference.types import RESEARCH_USE
from screens import _deps
from services import analysis, reporting
from services import verdicts as verdict_store
from viewer import overlays

DECISIONS = ["", "accept", "reject", "uncertain"]
REASONS = ["", "wrong location", "finding absent", "finding missed", "poor image quality", "artefact / device",
           "anatomy boundary wrong", "other (see note)"]  # fmt: skip
BONE_MODES = ["off", "overlay", "swipe", "side by side"]
KEYS = {"accept": "A", "reject": "X", "uncertain": "U"}  # Streamlit reserves C and R


def provenance(result: dict) -> str:
    return model_text(result["model"])


def model_text(m: dict) -> str:
    return f"{m['id']} {m['version']} · sha256 {m['weights_sha256'][:12]}…"


def load(image: dict) -> analysis.Analysis:
    """Stored results at once; otherwise the models run now, with progress shown."""
    ctx = _deps.ctx()
    runner = _deps.runner()
    cached = analysis.analyse_cached(ctx, runner, image)
    if cached is not None:
        return cached
    with st.status("Running the AI models on this image (first time only)…", expanded=True) as status:
        bar = st.progress(0.0)
        result = analysis.analyse(ctx, runner, image, lambda text, frac: bar.progress(frac, text=text))
        status.update(label=f"AI results ready ({', '.join(result.computed_now) or 'cached'})", state="complete",
                      expanded=False)  # fmt: skip
    return result


def controls(result: analysis.Analysis, image: dict, shape: tuple[int, int]) -> tuple[list, list, dict]:
    """Overlay widgets; returns canvas layers, shapes and the bone-suppression view settings."""
    key = image["id"]
    layers, shapes, bone_view = [], [], {"mode": "off"}
    st.markdown("**AI overlays** · :orange[Research use only]")
    for model_id, reason in result.unavailable.items():
        st.warning(f"{model_id} unavailable: {reason}")
    if result.anatomy and result.anatomy.get("inverted_grey_scale"):
        st.error(
            "This image looks stored with an inverted grey scale (air bright, bone dark): an anatomy model "
            "(named below) finds a plausible chest only on the inverted picture. Every AI result here (findings, "
            "heatmaps, outlines, bone suppression) was computed on the inverted picture and is not valid. The "
            "image's Photometric Interpretation, or its export, is likely wrong."
        )
        checked = result.anatomy["inversion_checked_with"]
        st.caption("Inversion checked with " + ", ".join(map(model_text, checked)))

    if result.anatomy:
        if st.checkbox("Anatomy (lungs, heart, clavicles)", key=f"ai_anat_{key}"):
            style = st.radio("Style", ["outline", "fill"], horizontal=True, key=f"ai_anat_style_{key}")
            opacity = st.slider(
                "Opacity", 0.0, 1.0, 0.9 if style == "outline" else 0.35, key=f"ai_anat_op_{key}"
            )
            png = _deps.anatomy_png(result.anatomy["label_map"], style)
            layers.append({"name": "anatomy", "png": png, "opacity": opacity})
            st.caption(f"Blue lungs · red heart · yellow clavicles · {provenance(result.anatomy)}")
        if problems := result.anatomy.get("problems"):
            st.warning(
                "The anatomy outlines do not look like a frontal chest radiograph ("
                + "; ".join(problems)
                + "): the cardiothoracic ratio is not reported. Check the outlines before relying on them."
            )
        ctr = analysis.ctr_shown(result.anatomy)
        if ctr and st.checkbox("Cardiothoracic ratio", key=f"ai_ctr_{key}"):
            shapes += overlays.ctr_shapes(ctr, image.get("spacing"))
            flag = ctr["ratio"] > analysis.CTR_LIMIT
            text = f"CTR **{ctr['ratio']:.2f}**" + (
                " · :red[cardiomegaly range (> 0.50)]" if flag else " · within 0.50"
            )
            st.markdown(text)
            if not image.get("spacing"):
                st.caption("The widths on the lines are in pixels: this image has no usable pixel spacing.")
            if note := analysis.ctr_note(image.get("view")):
                st.caption(note)
            st.caption(provenance(result.anatomy))

    if result.bone:
        mode = st.radio("Bone-suppressed image", BONE_MODES, horizontal=True, key=f"ai_bone_{key}")
        if mode != "off":
            png = _deps.stored_bytes(result.bone["soft_tissue"])
            bone_view = {"mode": mode, "png": png}
            # The soft-tissue picture replaces the radiograph, so it goes under the anatomy and heatmap layers.
            if mode == "overlay":
                layers.insert(
                    0, {"name": "bone suppressed", "png": _deps.grey_rgba_png(result.bone["soft_tissue"])}
                )
            elif mode == "swipe":
                cut = st.slider("Swipe (soft tissue left of the line)", 0.0, 1.0, 0.5, key=f"ai_swipe_{key}")
                layers.insert(
                    0,
                    {
                        "name": "bone suppressed",
                        "png": _deps.grey_rgba_png(result.bone["soft_tissue"]),
                        "clip_x": cut,
                    },
                )
            st.caption(provenance(result.bone))

    if result.findings:
        f = result.findings
        thr = result.thresholds
        ranked = sorted(f["probabilities"].items(), key=lambda kv: -kv[1])
        labels = [label for label, _ in ranked if label in f["heatmaps"]]
        label = st.selectbox(
            "Finding heatmap", ["(none)", *labels], key=f"ai_cam_{key}",
            format_func=lambda x: x if x == "(none)" else f"{x} · {f['probabilities'][x]:.3f}"
            + (" · positive" if f["probabilities"][x] >= thr[x] else ""),
        )  # fmt: skip
        if label != "(none)":
            cmap = st.selectbox("Colour map", list(overlays.HEATMAP_COLOURMAPS), key=f"ai_cmap_{key}")
            opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, key=f"ai_cam_op_{key}")
            layers.append({"name": f"Grad-CAM {label}", "png": _deps.heatmap_png(f["heatmaps"][label], cmap),
                           "opacity": opacity})  # fmt: skip
            if st.checkbox("Boxes from the heatmap", value=True, key=f"ai_boxes_{key}"):
                shapes += overlays.box_shapes(f["boxes"][label], label)
            st.caption(
                f"Grad-CAM{' clipped to the lungs' if f['heatmaps_clipped_to_lungs'] else ''}; boxes where it "
                f"exceeds {f['box_threshold']:.1f} · {provenance(f)}"
            )
    return layers, shapes, bone_view


def findings_table(result: analysis.Analysis) -> None:
    f = result.findings
    thr = result.thresholds
    rows = [
        {"Finding": label, "Score": p, "Threshold": thr[label], "Positive": p >= thr[label]}
        for label, p in sorted(f["probabilities"].items(), key=lambda kv: -kv[1])
    ]
    st.dataframe(
        rows, hide_index=True, width="stretch", height=35 * len(rows) + 38,
        column_config={"Score": st.column_config.ProgressColumn(format="%.3f", min_value=0.0, max_value=1.0)},
    )  # fmt: skip
    st.caption(f"{f['score_kind']} · {provenance(f)} · {RESEARCH_USE}")


def _items(result: analysis.Analysis, mine_all: list[verdict_store.Mine]) -> list[dict]:
    """Every AI statement a reader can judge, with the model that made it and its stored item's id (`item_id`,
    None where the items could not be stored yet)."""
    items = []

    def add(task: str, kind: str, key: str, says: str, model: dict) -> None:
        items.append({"kind": kind, "key": key, "says": says, "model": model,
                      "item_id": result.item_id(task, kind, key)})  # fmt: skip

    if result.findings:
        f = result.findings
        thr = result.thresholds
        for label, p in sorted(f["probabilities"].items(), key=lambda kv: -kv[1]):
            says = f"{p:.3f}" + (" positive" if p >= thr[label] else "")
            add("classification", "finding", label, says, f["model"])
            for i, b in enumerate(f["boxes"].get(label, []) if p >= thr[label] else []):
                add("classification", "box", f"{label}#{i}", f"box {b['w']}×{b['h']} at ({b['x']}, {b['y']})"
                    f" · {b['score']:.2f}", f["model"])  # fmt: skip
    if result.anatomy:
        a = result.anatomy
        # A verdict on the whole anatomy, given before each structure was an item, stays readable and editable
        whole = ("anatomy", "anatomy", a["model"]["id"], a["model"]["version"])
        if any((v.item_kind, v.item_key, v.model_id, v.model_version) == whole for v in mine_all):
            says = "lungs, heart, clavicles (an earlier verdict on all three)"
            add("segmentation", "anatomy", "anatomy", says, a["model"])
        areas = a.get("area_fraction", {})
        for name, _ in analysis.STRUCTURES:
            area = f" · {areas[name]:.0%} of the image" if name in areas else ""
            add("segmentation", "anatomy", name, f"{name} outline{area}", a["model"])
        if ctr := analysis.ctr_shown(a):
            add("segmentation", "ctr", "ctr", f"CTR {ctr['ratio']:.2f}", a["model"])
    if result.bone:
        bone = "bone_suppression"
        add(bone, bone, bone, "soft-tissue image", result.bone["model"])
    return items


def _move_focus(focus_key: str, n: int, step: int) -> None:
    st.session_state[focus_key] = min(max(st.session_state.get(focus_key, 0) + step, 0), n - 1)


def _quick_verdict(study_id: int, image_id: int, user_id: int, item: dict, decision: str, focus_key: str,
                   n: int) -> None:  # fmt: skip
    """Button callback: store one verdict (keeping the reader's reason and note) and move the focus on."""
    try:
        written = verdict_store.set_decision(_deps.ctx().engine, study_id, image_id, user_id, item, decision)
    except dbe.DatabaseBusy as exc:
        st.session_state["quick_verdict_msg"] = ("error", f"Verdict not saved: {exc}")
        return
    st.session_state["verdict_gen"] = st.session_state.get("verdict_gen", 0) + 1
    st.session_state["quick_verdict_msg"] = ("saved" if written else "same", f"{item['key']}: {decision}")
    _move_focus(focus_key, n, 1)


def my_verdicts(image: dict, user) -> list[verdict_store.Mine]:
    """The reader's stored verdicts on this image, read once per rerun and passed to the panels below (a
    verdict written by a callback or a save is in place before the rerun that reads it)."""
    return verdict_store.of_reader(_deps.ctx().engine, image["id"], user.user_id)


def quick_verdict(result: analysis.Analysis, study_id: int, image: dict, user, mine_all: list[verdict_store.Mine]) -> None:
    """The focused AI statement with accept / reject / uncertain buttons, each with a keyboard shortcut; the
    focus moves on after a verdict, and J / K move it by hand."""
    items = _items(result, mine_all)
    if not items:
        return
    focus_key = f"ai_focus_{image['id']}"
    i = min(st.session_state.get(focus_key, 0), len(items) - 1)
    it = items[i]
    mine = getattr(verdict_store.finder(mine_all)(it), "decision", None)
    args = (study_id, image["id"], user.user_id, it)
    n = len(items)
    with st.container(border=True, key="quick_verdict"):
        st.markdown(
            f"**{it['key']}** · {it['kind'].replace('_', ' ')} · AI says {it['says']} · {i + 1} of {n} · "
            f"your verdict: **{mine or 'none yet'}**"
        )
        with st.container(horizontal=True, gap="small"):
            st.button("Previous", key="focus_prev", shortcut="K", on_click=_move_focus, args=(focus_key, n, -1),
                      disabled=i == 0, icon=":material/arrow_back:", help="Previous AI statement")  # fmt: skip
            st.button("Next", key="focus_next", shortcut="J", on_click=_move_focus, args=(focus_key, n, 1),
                      disabled=i == n - 1, icon=":material/arrow_forward:", help="Next AI statement")  # fmt: skip
            for decision, icon in (("accept", ":material/check:"), ("reject", ":material/close:"),
                                   ("uncertain", ":material/help:")):  # fmt: skip
                st.button(decision.capitalize(), key=f"quick_{decision}", shortcut=KEYS[decision], icon=icon,
                          type="primary" if mine == decision else "secondary",
                          on_click=_quick_verdict, args=(*args, decision, focus_key, n))  # fmt: skip
        kind, msg = st.session_state.pop("quick_verdict_msg", (None, None))
        st.caption(
            (
                {"error": f":red[{msg}]", "saved": f"Saved {msg}.", "same": f"Unchanged, {msg}."}[kind]
                + " · "
                if msg
                else ""
            )
            + "Keys: **A** accept · **X** reject · **U** uncertain · **J** / **K** next / previous statement "
            "(not while typing in a field) · :orange[Research use only]"
        )


def verdicts(result: analysis.Analysis, study_id: int, image: dict, user, mine_all: list[verdict_store.Mine]) -> None:
    """One row per AI statement: accept / reject / uncertain with a reason; saved in one transaction."""
    ctx = _deps.ctx()
    items = _items(result, mine_all)
    find = verdict_store.finder(mine_all)
    rows = []
    for it in items:
        v = find(it)
        d, r, t = (v.decision, v.reason_code or "", v.reason_text or "") if v is not None else ("", "", "")
        rows.append({"Item": it["key"], "Kind": it["kind"], "AI says": it["says"], "Verdict": d, "Reason": r, "Note": t,
                     "Model": f"{it['model']['id']} {it['model']['version']}"})  # fmt: skip
    edited = st.data_editor(
        rows, hide_index=True, width="stretch", key=f"verdicts_{image['id']}_{st.session_state.get('verdict_gen', 0)}",
        disabled=["Item", "Kind", "AI says", "Model"],
        column_config={
            "Verdict": st.column_config.SelectboxColumn(options=DECISIONS, width="small"),
            "Reason": st.column_config.SelectboxColumn(options=REASONS),
            "Note": st.column_config.TextColumn(max_chars=500),
        },
    )  # fmt: skip
    changed = [
        (it, row) for it, row, old in zip(items, edited, rows, strict=True)
        if row["Verdict"] and (row["Verdict"], row["Reason"] or "", row["Note"] or "") != (old["Verdict"], old["Reason"], old["Note"])
    ]  # fmt: skip
    if st.button(f"Save {len(changed)} verdict{'s' * (len(changed) != 1)}", type="primary", disabled=not changed,
                 key=f"save_verdicts_{image['id']}"):  # fmt: skip
        try:
            verdict_store.save(ctx.engine, study_id, image["id"], user.user_id, [
                (it, row["Verdict"], row["Reason"] or None, (row["Note"] or "").strip() or None)
                for it, row in changed
            ])  # fmt: skip
        except dbe.DatabaseBusy as exc:
            st.error(f"Verdicts not saved: {exc}")
        else:
            st.session_state["verdict_gen"] = st.session_state.get("verdict_gen", 0) + 1
            st.session_state["verdicts_saved"] = len(changed)
            st.rerun()
    if saved := st.session_state.pop("verdicts_saved", None):
        st.success(f"Saved {saved} verdict{'s' * (saved != 1)}.")


def report(result: analysis.Analysis, study_id: int, image: dict, user, mine_all: list[verdict_store.Mine]) -> None:
    ctx = _deps.ctx()
    with dbe.read(ctx.engine) as s:
        saved = repo.get_report(s, study_id, user.user_id)
        saved_text = saved.text if saved else None
    accepted = reporting.accepted(mine_all, result)
    draft = reporting.draft(result, accepted, image.get("view"))
    gen = st.session_state.get(f"report_gen_{study_id}", 0)
    text = st.text_area("Draft report (from your accepted findings and measurements; edit freely)",
                        value=saved_text if saved_text is not None else draft, height=180, key=f"report_{study_id}_{gen}")  # fmt: skip
    c1, c2 = st.columns([1, 1])
    if c1.button("Save report", key=f"save_report_{study_id}"):
        dbe.write(ctx.engine, lambda s: repo.save_report(s, study_id, user.user_id, text))
        st.success("Report saved.")
    if c2.button("Regenerate from verdicts", key=f"regen_report_{study_id}"):
        dbe.write(ctx.engine, lambda s: repo.save_report(s, study_id, user.user_id, draft))
        st.session_state[f"report_gen_{study_id}"] = gen + 1
        st.rerun()
