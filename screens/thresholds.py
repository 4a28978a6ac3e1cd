"""Threshold sets (researchers and admins): choose each finding's threshold by a rule (target sensitivity, target
specificity, Youden, maximum F1) on an evaluation set a version was run on, see the confusion counts it gives,
and save the result as a named, versioned threshold set of that version. Admins put a set in force (the viewer,
the report and `cxr-review infer` use it), go back to the model's defaults or roll back; the history stays. The
work is done by services/threshold_sets.py."""

import streamlit as st

from db import engine as dbe
from inference.types import RESEARCH_USE
from screens import _deps, _signin, _table
from services import eval_metrics, eval_runs, eval_sets, threshold_sets

RULES = {k: v for k, v in threshold_sets.RULE_NAMES.items() if k not in ("manual", "per_finding")}
DB_ERRORS = (dbe.DatabaseBusy, dbe.DatabaseUnavailable)

user = _signin.require_page("thresholds")
ctx, registry = _deps.ctx(), _deps.registry()
st.title("Threshold sets")
st.caption(f"Operating thresholds per finding, chosen on an evaluation set · :orange[{RESEARCH_USE}]")
if message := st.session_state.pop("ts_msg", None):
    st.success(message)


def _done(message: str) -> None:
    st.session_state["ts_msg"] = message
    st.rerun()


def _cell(v):
    return _table.text(f"{v:.4g}" if isinstance(v, float) else v)


versions = [s.ref for s in registry.specs() if s.task == "classification"]
if not versions:
    st.info("No classification model is installed.")
    st.stop()
ref = st.selectbox("Model version", versions, key="ts_version")
spec = registry.resolve(ref)
force = threshold_sets.in_force(ctx, spec)
st.markdown(f"In force for {ref}: **{_table.plain(force.source)}**" + (f" ({force.note})" if force.note else ""))

# --- choose on an evaluation set ---------------------------------------------------------------------------------
st.subheader("Choose on an evaluation set")
runs = {s.id: [r for r in eval_runs.runs_of(ctx, s.id) if r.ref == ref and r.status == "done"]
        for s in eval_sets.list_sets(ctx)}  # fmt: skip
sets = {s.id: s for s in eval_sets.list_sets(ctx) if runs[s.id]}
if not sets:
    st.info(f"No evaluation set has a finished run of {ref}: run it on the Evaluation page first.")
else:
    c1, c2, c3 = st.columns([3, 2, 1])
    set_id = c1.selectbox("Evaluation set", list(sets), format_func=lambda i: sets[i].label, key="ts_set")
    rule = c2.selectbox("Rule", list(RULES), format_func=RULES.get, key="ts_rule")
    target = None
    if rule.startswith("target_"):
        target = c3.number_input("Target", 0.5, 1.0, 0.9, 0.01, key="ts_target")
    scored = _deps.eval_scored(set_id, ref, tuple(r.id for r in runs[set_id]))
    data = eval_metrics.labelled_by_finding(scored)
    with st.expander("A rule of its own for some findings"):
        editor = st.data_editor(
            [{"finding": f, "rule": rule, "target": target} for f in data], hide_index=True, width="stretch",
            disabled=["finding"], key=f"ts_own_{set_id}_{ref}_{rule}_{target}",
            column_config={"rule": st.column_config.SelectboxColumn("rule", options=list(RULES), required=True),
                           "target": st.column_config.NumberColumn("target (target rules)", min_value=0.5,
                                                                   max_value=1.0, step=0.01)},
        )  # fmt: skip
    own = threshold_sets.own_rules(editor, rule, target)
    proposal = threshold_sets.propose(data, rule, target, own)
    rows = threshold_sets.proposal_rows(proposal)
    st.dataframe([{k: _cell(v) for k, v in r.items()} for r in rows], hide_index=True, width="stretch", key="ts_table")
    st.caption(f"{RULES[rule]}{f' {target:.2f}' if target is not None else ''} on {sets[set_id].label}"
               f"{f' ({len(own)} finding(s) with a rule of their own)' if own else ''}: the counts are what each "
               "threshold gives on this set.")  # fmt: skip
    chosen = threshold_sets.chosen_thresholds(proposal)
    set_rule, per_finding = threshold_sets.rules_of(proposal, rule, target)
    with st.form("ts_save", border=True):
        name = st.text_input("Threshold set name", key="ts_name", max_chars=100)
        if st.form_submit_button("Save threshold set", type="primary"):
            try:
                saved = threshold_sets.save(ctx, name, spec, chosen, set_rule, user.user_id, target, set_id, per_finding)
            except (threshold_sets.ThresholdSetRefused, *DB_ERRORS) as exc:
                st.error(f"Not saved: {_signin.sentence(exc)}")
            else:
                _done(f"Saved {saved.label} of {ref} ({len(chosen)} thresholds, "
                      f"{threshold_sets.RULE_NAMES[set_rule]}).")

# --- sets of this version, what is in force, history ----------------------------------------------------------
st.subheader(f"Threshold sets of {ref}")
mine = threshold_sets.sets_of(ctx, spec)
set_labels = {s.id: s.label for s in mine}
names = {s.id: s.label for s in eval_sets.list_sets(ctx)}
st.dataframe([{"set": s.label, "rule": threshold_sets.RULE_NAMES[s.rule], "target": _cell(s.target),
               "rules": ", ".join(f"{k} {threshold_sets.RULE_NAMES[v['rule']]}"
                                  + (f" {v['target']:.2f}" if v["target"] is not None else "")
                                  for k, v in (s.rules or {}).items()),
               "evaluation set": names.get(s.eval_set_id, ""), "by": _cell(s.created_by),
               "at": f"{s.created_at:%Y-%m-%d %H:%M} UTC",
               "thresholds": ", ".join(f"{k} {v:.4g}" for k, v in s.thresholds.items())} for s in mine],
             hide_index=True, width="stretch")  # fmt: skip
if user.role == "admin":
    c1, c2, c3, c4 = st.columns([3, 1, 1.2, 1], vertical_alignment="bottom")
    pick = c1.selectbox("Put in force", list(set_labels), format_func=set_labels.get, key="ts_pick",
                        disabled=not mine)  # fmt: skip
    try:
        if c2.button("Activate", type="primary", key="ts_activate", disabled=pick is None):
            _done(f"{threshold_sets.activate(ctx, spec, pick, user.user_id, user.role)} is in force for {ref}.")
        if c3.button("Model defaults", key="ts_defaults"):
            threshold_sets.activate(ctx, spec, None, user.user_id, user.role)
            _done(f"{ref} runs at its default thresholds.")
        if c4.button("Roll back", key="ts_rollback"):
            _done(f"{threshold_sets.rollback(ctx, spec, user.user_id, user.role)} is in force again for {ref}.")
    except (threshold_sets.ThresholdSetRefused, *DB_ERRORS) as exc:
        st.error(f"Not changed: {_signin.sentence(exc)}")
else:
    st.caption("An admin puts a threshold set in force.")
history = threshold_sets.history(ctx, spec)
if history:
    st.markdown("**History** (newest first; the first is in force)")
    st.dataframe([{"at": f"{h.at:%Y-%m-%d %H:%M:%S} UTC", "in force": h.label + (" (rollback)" if h.rollback else ""), "by": _cell(h.by)} for h in history],
                 hide_index=True)  # fmt: skip
