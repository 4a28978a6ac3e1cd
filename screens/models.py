"""Admin: every model version the registry knows, the version that runs per task (with history and rollback),
and the operating thresholds of classification models."""

import streamlit as st

from db import engine as dbe
from inference.registry import TASKS
from inference.types import RESEARCH_USE, SCORE_KINDS
from screens import _deps, _signin
from services import analysis, models_admin, shadow

TASK_NAMES = {
    "segmentation": "Anatomy segmentation",
    "bone_suppression": "Bone suppression",
    "classification": "Finding classification",
}

user = _signin.require_page("models")
ctx, registry = _deps.ctx(), _deps.registry()

st.title("Models")
st.caption(f"Versions, the version that runs per task, operating thresholds · :orange[{RESEARCH_USE}]")
note = st.empty()  # always here, so that a message does not move (and reset) the tabs below
if message := st.session_state.pop("models_msg", None):
    note.success(message)


def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _flat(d: dict, prefix: str = "") -> list[dict]:
    rows = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flat(v, f"{name} · ")
        else:
            # one text column: metrics mix numbers, lists and strings, which Arrow cannot hold in one column
            rows.append({"Metric": name, "Value": f"{v:.4g}" if isinstance(v, float) else str(v)})
    return rows


def _done(message: str) -> None:
    st.session_state["models_msg"] = message
    st.rerun()


pins = models_admin.pins(ctx)
running, _ = models_admin.active_specs(ctx, registry, stored=pins)
rows = models_admin.catalogue(registry, running)
broken = registry.unreadable()  # model folders that could not be read at all (no row above)

tab_cat, tab_active, tab_ev, tab_thr = st.tabs(
    ["Catalogue", "Active versions", "Evidence", "Thresholds"], key="models_tab", on_change="rerun"
)

with tab_cat:
    st.dataframe(
        [
            {
                "Model": r.spec.model_id,
                "Version": r.spec.version,
                "Task": r.spec.task,
                "Runs now": r.active,
                "Status": "available" if r.problem is None else f"unavailable: {r.problem}",
                "Weights sha256": r.spec.weights_sha256[:16] + "…",
                "Labels": ", ".join(r.spec.labels),
                "Intended use": r.spec.intended_use,
                "Source": r.spec.source,
                "Shadow evaluation": shadow.status_line(r.spec),
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
        key="models_catalogue",
        column_config={
            "Status": st.column_config.TextColumn(width="medium"),
            "Labels": st.column_config.TextColumn(width="medium"),
            "Intended use": st.column_config.TextColumn(width="medium"),
            "Source": st.column_config.TextColumn(width="medium"),
            "Shadow evaluation": st.column_config.TextColumn(width="medium"),
        },
    )
    st.caption("Full sha256, metrics and details per version below.")
    for ref, reason in broken.items():
        st.warning(f"Model folder {ref} cannot be used: {reason}")
    for r in rows:
        s = r.spec
        status = "available" if r.problem is None else "unavailable"
        with st.expander(f"{s.ref} · {s.task} · {status}" + (" · runs now" if r.active else "")):
            if r.problem:
                st.error(f"Unavailable: {r.problem}")
            st.markdown(f"**Intended use** {s.intended_use or '—'}")
            st.markdown(f"**Source** {s.source or '—'}")
            shared = f" · the weights of {s.metadata['weights_of']}, as shipped" if s.metadata.get("weights_of") else ""
            st.markdown(f"**Weights** `{s.weights_file}` · sha256 `{s.weights_sha256}`{shared}")
            st.markdown(
                f"**Input** {s.input_size[0]} × {s.input_size[1]} · {s.normalisation or 'no normalisation'}"
                + (f" · created {s.created}" if s.created else "")
                + (" · built in" if s.builtin else f" · trained, in `{s.directory}`")
            )
            if s.task == "classification":
                st.markdown(f"**Scores** {SCORE_KINDS[s.score_kind]}")
                st.markdown(f"**Default thresholds** {analysis.thresholds_rule(s)}")
            if s.test_time_views:
                st.markdown(
                    f"**Test-time augmentation** {len(s.test_time_views)} zoomed/shifted views averaged"
                )
            st.markdown(f"**Labels** {', '.join(s.labels)}")
            if line := shadow.status_line(s):
                ft, parent = s.metadata["from_task"], s.metadata.get("parent", {})
                st.markdown(
                    f"**Learnt from corrections** task {ft['task']!r}: {len(ft['trained_on'])} final annotations "
                    f"trained on, {len(ft['held_out'])} held out by patient; parent "
                    f"{parent.get('model_id')}@{parent.get('version')} (sha256 {parent.get('weights_sha256')})"
                )
                (st.success if line.startswith("promoted") else st.warning)(f"Shadow evaluation: {line}")
                if diff := shadow.difference_rows(s):
                    st.dataframe(diff, hide_index=True, width="stretch", key=f"shadow_{s.ref}")
                    st.caption(f"Rule: {shadow.PROMOTION_RULE}. A promoted version is rolled back with "
                               "**Roll back** under Active versions.")  # fmt: skip
            if s.metrics:
                st.markdown("**Validation metrics**")
                st.dataframe(_flat(s.metrics), hide_index=True, width="stretch", key=f"metrics_{s.ref}")
            else:
                st.caption("No validation metrics recorded with this version.")

with tab_ev:
    st.caption(
        "Without an admin's choice, each task runs the version its evidence ranks first: every version measured "
        "side by side, in one run, on images none of them trained on (`cxr-review evidence`)."
    )
    for task in TASKS:
        data, ev_rows = models_admin.evidence_table(registry, task)
        with st.container(border=True):
            st.markdown(f"**{TASK_NAMES.get(task, task)}**")
            if data is None:
                st.caption("No evidence recorded: the built-in version runs by default.")
                continue
            st.markdown(f"Rule: {data['rule'].get('text') or data['rule']}.")
            st.dataframe(ev_rows, hide_index=True, width="stretch", key=f"evidence_{task}")
            for name, about in data.get("sets", {}).items():
                st.caption(f"**{name}** · {about.get('n', '?')} images · {about.get('truth', '')} "
                           f"· trained on by: {', '.join(about.get('trained_on_by') or ['no version'])}")  # fmt: skip
            st.caption(f"Measured {data.get('measured', '?')} with `{data.get('command', '?')}` "
                       f"(code {str(data.get('code_version', '?'))[:12]}, {data.get('torch_threads', '?')} threads)")  # fmt: skip
            if warning := data.get("timing_warning"):
                st.warning(f"The times of this measurement may not hold: {warning}.")

with tab_active:
    st.caption(
        "The version chosen here runs for every new analysis; results already stored stay tied to the version "
        "that made them. A choice whose weights change or disappear is not used (the default runs instead)."
    )
    for task in TASKS:
        versions = [r for r in rows if r.spec.task == task]
        with st.container(border=True):
            now = running.get(task)
            pin = pins.get(task)
            st.markdown(f"**{TASK_NAMES.get(task, task)}** · runs **{now.ref if now else 'nothing'}**")
            if pin is not None:
                st.caption(
                    f"Chosen by {pin.set_by or '?'} on {_when(pin.set_at)} · sha256 {pin.weights_sha256}"
                )
                if problem := models_admin.pin_problem(registry, pin):
                    st.warning(f"The chosen version is not used: {problem}")
            else:
                st.caption("No version chosen: the registry's default runs.")
            options = [r.spec.ref for r in versions if r.problem is None]
            if not options:
                st.warning("No usable version for this task.")
            current = (
                pin.ref if pin and pin.ref in options else (now.ref if now and now.ref in options else None)
            )
            with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
                choice = st.selectbox(
                    "Version to run", options, index=options.index(current) if current in options else None,
                    key=f"active_sel_{task}", width=420,
                )  # fmt: skip
                history = models_admin.history(ctx, task)
                set_clicked = st.button("Make active", key=f"active_set_{task}", type="primary",
                                        disabled=choice is None or (pin is not None and choice == pin.ref))  # fmt: skip
                rollback_clicked = st.button("Roll back", key=f"active_rollback_{task}", disabled=not history,
                                             help="Restore the choice made before the current one")  # fmt: skip
                default_clicked = st.button(
                    "Use registry default", key=f"active_default_{task}", disabled=pin is None
                )
            try:
                if set_clicked:
                    spec = models_admin.set_active(ctx, registry, task, choice, user.user_id)
                    _done(f"{TASK_NAMES.get(task, task)} now runs {spec.ref}.")
                if rollback_clicked:
                    restored = models_admin.rollback(ctx, registry, task, user.user_id)
                    _done(f"{TASK_NAMES.get(task, task)} rolled back to {restored}.")
                if default_clicked:
                    models_admin.use_default(ctx, task, user.user_id)
                    _done(f"{TASK_NAMES.get(task, task)} runs the registry's default again.")
            except (models_admin.ModelChoiceRefused, dbe.DatabaseBusy) as exc:
                st.error(f"Not changed: {exc}")
            if history:
                st.dataframe(
                    [
                        {
                            "When (UTC)": _when(h.at),
                            "Chosen": h.ref or models_admin.DEFAULT,
                            "Weights sha256": (h.weights_sha256 or "")[:16],
                            "By": h.set_by,
                        }
                        for h in history
                    ],
                    hide_index=True,
                    width="stretch",
                    key=f"active_history_{task}",
                    height=min(38 + 35 * len(history), 38 + 35 * 6),
                )

with tab_thr:
    specs = [r.spec for r in rows if r.spec.task == "classification"]
    if not specs:
        st.info("No classification model is registered.")
    else:
        refs = [s.ref for s in specs]
        now = running.get("classification")
        ref = st.selectbox(
            "Model version",
            refs,
            index=refs.index(now.ref) if now and now.ref in refs else 0,
            key="thr_model",
        )
        spec = specs[refs.index(ref)]
        st.caption(
            f"A finding is flagged positive when its score reaches the threshold. Scores: "
            f"{SCORE_KINDS[spec.score_kind]}. Changes apply at once to the viewer's positive flags and the draft "
            "report; the models are not run again."
        )
        current = models_admin.thresholds(ctx, spec)
        edited = [label for label in spec.labels if current[label] != spec.thresholds[label]]
        gen = st.session_state.get(f"thr_gen_{ref}", 0)
        with st.form(f"thr_form_{ref}", border=True):
            cols = st.columns(3)
            values = {
                label: cols[i % 3].number_input(
                    label,
                    min_value=0.0,
                    max_value=1.0,
                    value=float(current[label]),
                    step=0.001,
                    format="%.6f",
                    key=f"thr_{ref}_{label}_{gen}",
                    help=f"Default {spec.thresholds[label]:.6g}",
                )
                for i, label in enumerate(spec.labels)
            }
            submitted = st.form_submit_button("Save thresholds", type="primary")
        st.caption(
            (
                "Edited: "
                + ", ".join(f"{k} {current[k]:.6g} (default {spec.thresholds[k]:.6g})" for k in edited)
            )
            if edited
            else "All thresholds are the model's defaults."
        )
        try:
            if submitted:
                n = models_admin.save_thresholds(ctx, spec, values, user.user_id)
                _done(f"Saved {n} threshold{'s' * (n != 1)} of {spec.ref}." if n else "No threshold changed.")
            if st.button("Reset to defaults", key=f"thr_reset_{ref}", disabled=not edited):
                models_admin.reset_thresholds(ctx, spec, user.user_id)
                st.session_state[f"thr_gen_{ref}"] = gen + 1
                _done(f"Thresholds of {spec.ref} are the model's defaults again.")
        except (models_admin.ModelChoiceRefused, dbe.DatabaseBusy) as exc:
            st.error(f"Not saved: {exc}")
