"""The viewer's AI part: run or fetch the results, the overlay controls, verdicts and the draft report.
Everything AI here is labelled "Research use only" and carries model id, version and weights sha256."""

from __future__ import annotations

import streamlit as st

from db import engine as dbe
from db import report_versions
from inference.types import RESEARCH_USE, SCORE_KINDS
from screens import _deps, _signin, _table
from services import analysis, gate_overrides, pacs, report_check, reporting, shadow
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


def load(image: dict, user=None) -> analysis.Analysis:
    """Stored results at once; otherwise the models run now, with progress shown. The quality gate runs first;
    the reader's override of a refusal is theirs alone."""
    ctx = _deps.ctx()
    runner = _deps.runner()
    reader = getattr(user, "user_id", None)
    cached = analysis.analyse_cached(ctx, runner, image, reader)
    if cached is not None:
        return cached
    with st.status("Running the AI models on this image (first time only)…", expanded=True) as status:
        bar = st.progress(0.0)
        result = analysis.analyse(ctx, runner, image, lambda text, frac: bar.progress(frac, text=text),
                                  reader_id=reader)  # fmt: skip
        label = (
            "Quality gate: the AI does not read this image"
            if result.withheld
            else f"AI results ready ({', '.join(result.computed_now) or 'cached'})"
        )
        status.update(label=label, state="complete", expanded=False)
    return result


def _override(image: dict, user, gate: dict) -> None:
    """Button callback: record the reader's override with the reason typed."""
    reason = st.session_state.get(f"gate_reason_{image['id']}", "")
    try:
        gate_overrides.record(_deps.ctx().engine, image["id"], user.user_id, gate, reason)
    except (gate_overrides.OverrideNotSaved, dbe.DatabaseBusy) as exc:
        st.session_state["gate_msg"] = f"Override not saved: {exc}"


def gate_status(result: analysis.Analysis, image: dict, user) -> None:
    """What the quality gate said: refused (why, and an override with a required reason), overridden, not
    checked, or passed."""
    gate = result.gate
    if not gate:
        return
    reasons = "; ".join(gate["reasons"])
    if gate["passed"] is None:
        st.warning(f"**Quality not checked** ({reasons}): nothing has checked that this is a frontal chest "
                   "radiograph the models can read.", icon=":material/help:")  # fmt: skip
        return
    by = model_text(gate["model"])
    if gate["passed"]:
        st.caption(f"Quality gate passed: a frontal chest radiograph · {by}")
        return
    if result.gate_override is not None:
        st.warning(f"**Quality gate overridden** by you (“{result.gate_override.reason}”). The gate refused this "
                   f"image: {reasons}. The AI output below is shown anyway · {by}", icon=":material/warning:")  # fmt: skip
        return
    with st.container(border=True, key="quality_gate_refused"):
        st.error(f"**Quality gate: the AI does not read this image** — {reasons}. No finding scores, heatmaps, "
                 "boxes or CTR are shown.", icon=":material/block:")  # fmt: skip
        st.caption(f"{by} · Research use only")
        if msg := st.session_state.pop("gate_msg", None):
            st.error(msg)
        if user is None:
            return
        reason = st.text_input("Reason to override (recorded with your name)", key=f"gate_reason_{image['id']}",
                               max_chars=gate_overrides.MAX_REASON,
                               placeholder="e.g. a frontal film, only slightly rotated")  # fmt: skip
        st.button("Override the quality gate", key=f"gate_override_{image['id']}", disabled=not reason.strip(),
                  on_click=_override, args=(image, user, gate), icon=":material/gpp_maybe:")  # fmt: skip


def controls(result: analysis.Analysis, image: dict, shape: tuple[int, int], user=None) -> tuple[list, list, dict]:
    """Overlay widgets; returns canvas layers, shapes and the bone-suppression view settings."""
    key = image["id"]
    layers, shapes, bone_view = [], [], {"mode": "off"}
    st.markdown("**AI overlays** · :orange[Research use only]")
    gate_status(result, image, user)
    if result.withheld:
        return layers, shapes, bone_view
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
        pos = analysis.flagged(result)
        ranked = sorted(f["probabilities"].items(), key=lambda kv: -kv[1])
        labels = [label for label, _ in ranked if label in f["heatmaps"]]
        label = st.selectbox(
            "Finding heatmap", ["(none)", *labels], key=f"ai_cam_{key}",
            format_func=lambda x: x if x == "(none)" else f"{x} · {f['probabilities'][x]:.3g}"
            + (" · positive" if pos[x] else ""),
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
    thr, pos = result.thresholds, analysis.flagged(result)
    rows = [
        {"Finding": label, "Score": p, "Threshold": thr[label], "Positive": pos[label]}
        for label, p in sorted(f["probabilities"].items(), key=lambda kv: -kv[1])
    ]
    st.dataframe(
        rows, hide_index=True, width="stretch", height=35 * len(rows) + 38,
        # 3 significant digits, not 3 decimals: the built-in's operating points go down to 5e-7, and "0.000" beside a
        # positive flag read as nonsense
        column_config={"Score": st.column_config.ProgressColumn(format="%.3g", min_value=0.0, max_value=1.0)},
    )  # fmt: skip
    st.caption(f"{f['score_kind']} · thresholds: {result.thresholds_from or 'model defaults'} · "
               f"{analysis.positive_means(result)} · {provenance(f)} · {RESEARCH_USE}")  # fmt: skip


def shadow_scores(result: analysis.Analysis, image: dict, user) -> None:
    """Researchers only: a candidate trained from corrections scores the image beside the active version."""
    if user.role not in shadow.SHADOW_ROLES or not result.findings:
        return
    m = result.findings["model"]
    running = _deps.registry().resolve(f"{m['id']}@{m['version']}")
    options = [s.ref for s in shadow.candidates(_deps.registry(), running)]
    if not options or not st.toggle("Shadow mode: a candidate's scores beside the active version's",
                                    key="shadow_on", help="Researchers only; never shown to radiologists"):  # fmt: skip
        return
    ref = st.selectbox("Candidate", options, key="shadow_candidate")
    try:
        cand = _deps.shadow_scores(image, ref, user.role)
    except (shadow.NotAllowed, shadow.ShadowError) as exc:
        st.error(str(exc))
        return
    active = result.findings["probabilities"]
    # a difference only between scores of one kind (a softmax share and a calibrated probability do not subtract)
    same_kind = cand["score_kind"] == running.score_kind
    st.dataframe(
        [{"Finding": label, "Active": p, "Candidate": cand["probabilities"].get(label),
          **({"Candidate minus active": cand["probabilities"].get(label, float("nan")) - p} if same_kind else {})}
         for label, p in sorted(active.items(), key=lambda kv: -kv[1])],
        hide_index=True, width="stretch", key="shadow_table",
    )  # fmt: skip
    if not same_kind:
        st.caption(f"No difference column: the active version's scores are {SCORE_KINDS[running.score_kind]}, "
                   f"the candidate's {SCORE_KINDS[cand['score_kind']]}.")  # fmt: skip
    c = cand["model"]
    st.caption(f"CANDIDATE ({cand['status']}) {c['id']}@{c['version']} · sha256 {c['weights_sha256']} "
               f"· {SCORE_KINDS[cand['score_kind']]} · beside active {provenance(result.findings)} · {RESEARCH_USE}")  # fmt: skip


def shadow_anatomy(result: analysis.Analysis, image: dict, user) -> None:
    """Researchers only: a segmentation candidate trained from corrections outlines the image beside the active
    version: Dice agreement per structure, both CTRs and both outlines."""
    if user.role not in shadow.SHADOW_ROLES or not result.anatomy:
        return
    m = result.anatomy["model"]
    running = _deps.registry().resolve(f"{m['id']}@{m['version']}")
    options = [s.ref for s in shadow.candidates(_deps.registry(), running, "segmentation")]
    if not options or not st.toggle("Shadow mode: a candidate's anatomy beside the active version's",
                                    key="shadow_seg_on", help="Researchers only; never shown to radiologists"):  # fmt: skip
        return
    ref = st.selectbox("Anatomy candidate", options, key="shadow_seg_candidate")
    try:
        cand = _deps.shadow_anatomy(image, ref, user.role, result.anatomy)
    except (shadow.NotAllowed, shadow.ShadowError) as exc:
        st.error(str(exc))
        return
    shown = analysis.ctr_shown(result.anatomy)
    ctrs = ["withheld" if v is None else f"{v:.2f}" for v in (None if shown is None else shown["ratio"], cand["ctr"])]
    rows = [{"Structure": name, "Dice, candidate vs active": d, "Note": ""}
            for name, d in cand["dice_vs_active"].items()]  # fmt: skip
    rows.append({"Structure": "CTR", "Dice, candidate vs active": None,
                 "Note": f"active {ctrs[0]} · candidate {ctrs[1]}"})  # fmt: skip
    st.dataframe(rows, hide_index=True, width="stretch", key="shadow_seg_table",
                 column_config={"Dice, candidate vs active": st.column_config.NumberColumn(format="%.3f")})  # fmt: skip
    c1, c2 = st.columns(2)
    c1.image(cand["active"], caption=f"Active {provenance(result.anatomy)}")
    c2.image(cand["candidate"], caption=f"Candidate {ref}")
    c = cand["model"]
    st.caption(f"CANDIDATE ({cand['status']}) {c['id']}@{c['version']} · sha256 {c['weights_sha256']} "
               f"· beside active {provenance(result.anatomy)} · {RESEARCH_USE}")  # fmt: skip


def _items(result: analysis.Analysis, mine_all: list[verdict_store.Mine]) -> list[dict]:
    """Every AI statement a reader can judge, with the model that made it and its stored item's id (`item_id`,
    None where the items could not be stored yet)."""
    items = []

    def add(task: str, kind: str, key: str, says: str, model: dict) -> None:
        items.append({"kind": kind, "key": key, "says": says, "model": model,
                      "item_id": result.item_id(task, kind, key)})  # fmt: skip

    if result.findings:
        f = result.findings
        pos = analysis.flagged(result)
        for label, p in sorted(f["probabilities"].items(), key=lambda kv: -kv[1]):
            says = f"{p:.3g}" + (" positive" if pos[label] else "")
            add("classification", "finding", label, says, f["model"])
            for i, b in enumerate(f["boxes"].get(label, []) if pos[label] else []):
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


def _consistency(text: str, result: analysis.Analysis, mine_all: list[verdict_store.Mine], study_id: int,
                 earlier: list[dict]) -> dict:  # fmt: skip
    """The consistency check of `text` as stored with its version: the flags with the acknowledgements and notes
    given on screen (or carried from the version before), and the classifier that scored the findings."""
    f = result.findings
    if not f:
        return {"skipped": "no AI findings for this image: saved without a consistency check", "flags": []}
    checked = report_check.check(text, f["probabilities"], result.thresholds,
                                 report_check.finding_verdicts(mine_all, result.models))  # fmt: skip
    checked = report_check.carry_acknowledgements(checked, earlier)
    for flag in checked.flags:
        ack_key = _flag_key("ack", study_id, flag.finding, flag.kind)
        if ack_key in st.session_state:
            flag.acknowledged = bool(st.session_state[ack_key])
            flag.note = (st.session_state.get(_flag_key("note", study_id, flag.finding, flag.kind)) or "").strip() or None
    return checked.to_json() | {"model": {k: f["model"][k] for k in ("id", "version", "weights_sha256")}}


def _flag_key(what: str, study_id: int, finding: str, kind: str) -> str:
    return f"report_{what}_{study_id}_{finding}_{kind}"


def _show_overlay(image_id: int, finding: str) -> None:
    st.session_state[f"ai_cam_{image_id}"] = finding


def _show_ctr(image_id: int) -> None:
    st.session_state[f"ai_ctr_{image_id}"] = True


def _sentence_links(text: str, result: analysis.Analysis, study_id: int, image_id: int) -> None:
    """Each sentence that speaks of a finding or the CTR, with a button per overlay: a click shows it in the
    viewer (the heatmap picked, the CTR lines switched on), so the reader checks a sentence against the image."""
    heatmaps = set((result.findings or {}).get("heatmaps", {}))
    links = report_check.sentence_links(text, heatmaps, analysis.ctr_shown(result.anatomy) is not None)
    if not links:
        return
    shown = st.session_state.get(f"ai_cam_{image_id}")
    with st.expander(f"Sentences linked to the AI overlays ({len(links)}): a click shows the overlay", expanded=True):
        for i, link in enumerate(links):
            with st.container(horizontal=True, vertical_alignment="center", gap="small", key=f"report_link_{i}"):
                st.markdown(f"“{_table.plain(link.sentence)}”")
                for finding in link.findings:
                    st.button(finding, key=f"report_link_{study_id}_{i}_{finding}", on_click=_show_overlay,
                              args=(image_id, finding), type="primary" if shown == finding else "secondary",
                              icon=":material/visibility:", help=f"Show the {finding} heatmap in the viewer")  # fmt: skip
                if link.ctr:
                    st.button("CTR lines", key=f"report_link_{study_id}_{i}_ctr", on_click=_show_ctr,
                              args=(image_id,), icon=":material/straighten:",
                              type="primary" if st.session_state.get(f"ai_ctr_{image_id}") else "secondary",
                              help="Show the cardiothoracic ratio's measurement lines in the viewer")  # fmt: skip


def _report_msg(study_id: int, kind: str, text: str) -> None:
    st.session_state[f"report_msg_{study_id}"] = (kind, text)


def _write_version(study_id: int, user, text: str, parent_id: int | None, **kw) -> bool:
    try:
        dbe.write(_deps.ctx().engine, lambda s: report_versions.add(s, study_id, user.user_id, user.user_id, text,
                                                                    parent_id=parent_id, **kw))  # fmt: skip
    except (report_versions.ReportNotSaved, dbe.DatabaseBusy) as exc:
        _report_msg(study_id, "error", f"Report not saved: {exc}")
        return False
    return True


def _regenerate(study_id: int, user, draft: str, newest_id: int | None, newest_text: str | None,
                result: analysis.Analysis, mine_all: list[verdict_store.Mine], earlier: list[dict]) -> None:  # fmt: skip
    """Callback of "Replace with the draft": the editor's text is kept as a version first (unless it is the
    newest version already), then the editor shows the draft and follows the verdicts again."""
    text = st.session_state.get(f"report_text_{study_id}", "")
    st.session_state.pop(f"report_confirm_regen_{study_id}", None)
    if text != newest_text and not _write_version(
        study_id, user, text, newest_id, consistency=_consistency(text, result, mine_all, study_id, earlier)
    ):
        return
    st.session_state[f"report_text_{study_id}"] = st.session_state[f"report_base_{study_id}"] = draft
    _report_msg(study_id, "success", "Replaced by a new draft from the verdicts; your text is kept as a version.")


def _ask(key: str, value: bool = True) -> None:
    st.session_state[key] = value


def _signed(study_id: int, user, versions: list, names: dict[int, str]) -> None:
    """A signed report: its text read-only, who signed it and when, and (for a radiologist or an admin) an
    amendment, which is a new final version with its reason."""
    newest = versions[-1]
    what = "Amended" if newest.amendment else "Signed"
    st.text_area("Signed report (final, locked)", value=newest.text, height=180, disabled=True,
                 key=f"report_signed_{study_id}_{newest.id}")  # fmt: skip
    st.success(f"{what} by {names.get(newest.signed_by_id, '?')} at {newest.signed_at:%Y-%m-%d %H:%M} UTC · "
               "final and locked" + (f" · amendment: {newest.amendment_reason}" if newest.amendment else ""),
               icon=":material/lock:")  # fmt: skip
    if user.role not in ("radiologist", "admin"):
        return
    with st.expander("Amend the signed report"):
        amended = st.text_area("Amended report", value=newest.text, height=180, key=f"report_amend_{study_id}")
        reason = st.text_input("Reason for the amendment", key=f"report_amend_reason_{study_id}", max_chars=500)
        if st.button("Save amendment", key=f"report_amend_save_{study_id}", disabled=not reason.strip()):
            if _write_version(study_id, user, amended, newest.id, amendment_reason=reason):
                _report_msg(study_id, "success", "Amendment saved (a new final version).")
            st.rerun()


def _history(versions: list, names: dict[int, str]) -> None:
    with st.expander(f"Report versions ({len(versions)})"):
        st.dataframe(
            [{"Version": i + 1, "Status": v.status.value + (" (amendment)" if v.amendment else ""),
              "Author": names.get(v.author_id, "?"), "Saved (UTC)": f"{v.created_at:%Y-%m-%d %H:%M:%S}",
              "Signed by": names.get(v.signed_by_id, "") if v.signed_by_id else "",
              "Reason": v.amendment_reason or "",
              "Flags": len((report_versions.consistency_of(v) or {}).get("flags", []))}
             for i, v in enumerate(versions)][::-1],
            hide_index=True, width="stretch", key="report_history",
        )  # fmt: skip


def _flags(consistency: dict | None, study_id: int, image_id: int, heatmaps: set[str], locked: bool = False) -> None:
    """The flags of the newest saved version, each with its sentence, the AI's probability, a button that shows
    the finding's heatmap in the viewer and an acknowledgement with a note (saved with the next version)."""
    if consistency is None:
        return
    if consistency.get("skipped"):
        st.info(f"Consistency check: {consistency['skipped']}.", icon=":material/info:")
        return
    flags = consistency.get("flags", [])
    if not flags:
        st.caption("Consistency check: the report agrees with the AI findings and your verdicts.")
        return
    open_n = sum(not f.get("acknowledged") for f in flags)
    st.markdown(f"**Consistency check** · {len(flags)} flag{'s' * (len(flags) != 1)}, {open_n} not acknowledged "
                "· :orange[Research use only]")  # fmt: skip
    for f in flags:
        with st.container(border=True, key=f"report_flag_{f['finding']}_{f['kind']}"):
            said = f"“{f['report_text']}”" if f.get("report_text") else "(not mentioned)"
            st.markdown(f":red[**{f['finding']}**] · {report_check.KIND_TEXT[f['kind']]} · AI probability "
                        f"{f['ai_probability']:.3g} (operating point {f['threshold']:.3g}) · report: {said}")  # fmt: skip
            c1, c2, c3 = st.columns([1, 1, 2])
            c1.button("Show overlay", key=_flag_key("overlay", study_id, f["finding"], f["kind"]),
                      on_click=_show_overlay, args=(image_id, f["finding"]), disabled=f["finding"] not in heatmaps,
                      icon=":material/visibility:")  # fmt: skip
            if locked:
                c2.markdown("Acknowledged" if f.get("acknowledged") else ":red[Not acknowledged]")
                c3.markdown(f.get("note") or "")
                continue
            c2.checkbox("Acknowledge", value=bool(f.get("acknowledged")),
                        key=_flag_key("ack", study_id, f["finding"], f["kind"]))  # fmt: skip
            c3.text_input("Note (optional)", value=f.get("note") or "", max_chars=500,
                          key=_flag_key("note", study_id, f["finding"], f["kind"]), label_visibility="collapsed",
                          placeholder="Note (optional)")  # fmt: skip
    if not locked:
        st.caption("Acknowledgements are saved with the next version (Save report or Sign report).")


def report(result: analysis.Analysis, study_id: int, image: dict, user, mine_all: list[verdict_store.Mine]) -> None:
    """The reader's report: versions (never overwritten), a draft that follows the verdicts until it is edited by
    hand, the consistency check on every save and signature, sign-off (final, locked) and amendments."""
    ctx = _deps.ctx()
    with dbe.read(ctx.engine) as s:
        versions = report_versions.versions(s, study_id, user.user_id)
        ids = {i for v in versions for i in (v.author_id, v.signed_by_id) if i}
        names = report_versions.usernames(s, ids) if ids else {}
    newest = versions[-1] if versions else None
    st.markdown("**Report** · :orange[Research use only]")
    if kind_msg := st.session_state.pop(f"report_msg_{study_id}", None):
        getattr(st, kind_msg[0])(kind_msg[1])
    if report_versions.is_locked(newest):
        _signed(study_id, user, versions, names)
        _sentence_links(newest.text, result, study_id, image["id"])
        heatmaps = set((result.findings or {}).get("heatmaps", {}))
        _flags(report_versions.consistency_of(newest), study_id, image["id"], heatmaps, locked=True)
        _history(versions, names)
        return
    accepted = reporting.accepted(mine_all, result)
    draft = reporting.draft(result, accepted, image.get("view"), reporting.judged(mine_all, result, "reject"))
    wkey, bkey = f"report_text_{study_id}", f"report_base_{study_id}"
    if wkey not in st.session_state:  # opened now: the newest version, or the draft where it followed the verdicts
        follows = newest is None or newest.generated
        st.session_state[wkey] = draft if follows else newest.text
        st.session_state[bkey] = draft if follows else None
    # Not edited by hand since it was set from the verdicts: it follows them (an accepted finding shows at once).
    follows = st.session_state[wkey] == st.session_state.get(bkey)
    if follows and st.session_state[wkey] != draft:
        st.session_state[wkey] = st.session_state[bkey] = draft
    text = st.text_area("Draft report (from your accepted findings and measurements; edit freely)", height=180,
                        key=wkey)  # fmt: skip
    if follows:
        st.caption("Follows the verdicts: accepting or rejecting a finding updates it at once. Once you edit it by hand "
                   "it stays as you wrote it.")  # fmt: skip
    else:
        st.caption(":orange[Edited by hand: it no longer follows the verdicts.] “Regenerate from verdicts” would "
                   "replace it with a new draft (your text is kept as a version).")  # fmt: skip
    _sentence_links(text, result, study_id, image["id"])
    consistency = report_versions.consistency_of(newest)
    earlier = (consistency or {}).get("flags", [])
    parent = newest.id if newest else None
    c1, c2, c3 = st.columns([1, 1, 1])
    if c1.button("Save report", key=f"save_report_{study_id}", type="primary"):
        checked = _consistency(text, result, mine_all, study_id, earlier)
        if _write_version(study_id, user, text, parent, generated=text == draft, consistency=checked):
            n = len(checked["flags"])
            _report_msg(study_id, "success", "Report saved (a new version)."
                        + (f" The consistency check raised {n} flag{'s' * (n != 1)}: see below." if n else ""))  # fmt: skip
        st.rerun()
    confirm_regen = f"report_confirm_regen_{study_id}"
    c2.button("Regenerate from verdicts", key=f"regen_report_{study_id}", disabled=text == draft,
              on_click=_ask, args=(confirm_regen,),
              help="Replace the text with a new draft from your verdicts (asks first; your text is kept)")  # fmt: skip
    confirm_sign = f"report_confirm_sign_{study_id}"
    can_sign = user.role in ("radiologist", "admin")
    sign = c3.button("Sign report", key=f"sign_report_{study_id}", disabled=not can_sign or not text.strip(),
                     icon=":material/signature:",
                     help="Final and locked, with your name and the time; a change after it is an amendment")  # fmt: skip
    if st.session_state.get(confirm_regen):
        with st.container(border=True, key="report_confirm_regen"):
            st.warning("Replace the text in the editor with a new draft from the verdicts? Your text is kept as a "
                       "report version.")  # fmt: skip
            d1, d2 = st.columns([1, 1])
            d1.button("Replace with the draft", key=f"regen_yes_{study_id}", on_click=_regenerate,
                      args=(study_id, user, draft, parent, newest.text if newest else None, result, mine_all, earlier))  # fmt: skip
            d2.button("Keep my text", key=f"regen_no_{study_id}", on_click=_ask, args=(confirm_regen, False))
    if sign or st.session_state.get(confirm_sign):
        checked = _consistency(text, result, mine_all, study_id, earlier)
        open_flags = [f for f in checked["flags"] if not f["acknowledged"]]
        if open_flags and not st.session_state.get(confirm_sign):
            st.session_state[confirm_sign] = True
        if open_flags:
            with st.container(border=True, key="report_confirm_sign"):
                st.warning(f"{len(open_flags)} consistency flag{'s are' if len(open_flags) != 1 else ' is'} not "
                           f"acknowledged ({', '.join(f['finding'] for f in open_flags)}). Sign anyway?")  # fmt: skip
                d1, d2 = st.columns([1, 1])
                yes = d1.button("Sign anyway", key=f"sign_yes_{study_id}", type="primary")
                d2.button("Back to the report", key=f"sign_no_{study_id}", on_click=_ask, args=(confirm_sign, False))
        if not open_flags or yes:
            st.session_state.pop(confirm_sign, None)
            if _write_version(study_id, user, text, parent, sign=True, consistency=checked):
                _report_msg(study_id, "success", "Report signed: final and locked.")
            st.rerun()
    heatmaps = set((result.findings or {}).get("heatmaps", {}))
    _flags(consistency if newest is not None and newest.text == text else None, study_id, image["id"], heatmaps)
    if newest is not None and newest.text != text:
        st.caption("The consistency check runs when you save or sign.")
    if versions:
        _history(versions, names)


def may_send_to_pacs(user) -> bool:
    """A PACS is configured and the user's role may import (and so retrieve) studies."""
    return bool(_deps.ctx().settings.pacs_url) and user.role in _signin.PAGE_ROLES["import_studies"]


def send_to_pacs(study_uid: str, user) -> None:
    """The study's final annotations, or else the AI's reading, to the PACS as DICOM SEG and SR; says what went."""
    ctx = _deps.ctx()
    try:
        cfg = pacs.config(ctx.settings)
        with st.spinner("Sending to the PACS (the AI models run first on images they have not read)…"):
            done = pacs.store(ctx, cfg, study_uid, pacs.FORMATS, _deps.runner(), user_id=user.user_id,
                              client=_signin.client())  # fmt: skip
    except pacs.PacsError as exc:
        st.error(f"Not sent to the PACS: {exc.message}")
        return
    kinds = [o["kind"].upper() for o in done.objects if o["status"] == "stored"]
    what = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    source = "the final annotations" if done.source == "final" else f"the AI's reading ({', '.join(done.models)})"
    st.success(f"Sent to the PACS at {cfg.url}: {what} from {source} · {RESEARCH_USE}")
    for s in done.skipped:
        st.warning(f"Image {s['image_id']}: {(s['kind'] or '').upper()} not sent: {s['reason']}")
