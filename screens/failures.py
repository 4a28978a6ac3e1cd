"""Failure cases (researchers and admins): for an evaluation set, a model version with a finished run on it and a
finding, the false negatives and false positives at the operating point in force (or a what-if threshold),
ordered by loss, with each image's Grad-CAM heatmap, its labels and its score; subgroup filters; likely label
errors; an embedding map with lasso; similar cases in the set and in the whole database; a group sent to
annotators or downloaded as CSV.
Each tab is one function of TABS (one more tab is one more entry). The work is done by services/failure_cases.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from inference.types import RESEARCH_USE, ModelUnavailable
from screens import _deps, _embedding_map, _send_group, _signin, _table
from services import eval_metrics, eval_runs, eval_sets, failure_cases, threshold_sets

PAGE_SIZE = 12
COLUMNS = 4

user = _signin.require_page("failures")
ctx, runner = _deps.ctx(), _deps.runner()
st.title("Failure cases")
st.caption(f"Where a model version is wrong on an evaluation set, per finding · :orange[{RESEARCH_USE}]")


@dataclass(frozen=True)
class View:
    """What every tab reads: the choices made above the tabs and the cases they give."""

    info: eval_sets.SetInfo
    ref: str
    stamp: tuple
    scored: eval_metrics.Scored
    finding: str
    threshold: float
    cases: list[failure_cases.Case]  # after the subgroup filters, by loss
    weights_sha256: str  # of `ref` in the registry now: part of the tile cache key

    @property
    def key(self) -> str:
        return f"{self.info.id}_{self.ref}_{self.finding}"


sets = eval_sets.list_sets(ctx)
if not sets:
    st.info("No evaluation set yet: make one on the Evaluation page.")
    st.stop()
by_id = {s.id: s for s in sets}
c1, c2, c3 = st.columns([3, 2, 2])
set_id = c1.selectbox("Evaluation set", list(by_id), format_func=lambda i: by_id[i].label, key="fc_set")
info = by_id[set_id]
done, gone = eval_runs.known_versions(runner.registry, eval_runs.finished_versions(ctx, set_id))
if gone:
    st.caption(f"Finished runs of {', '.join(gone)}: no longer installed, so their cases cannot be shown.")
if not done:
    st.warning(f"{info.label} has no finished run of an installed model version: run one on the Evaluation page.")
    st.stop()
ref = c2.selectbox("Model version", done, key="fc_version")
stamp = eval_runs.results_stamp(eval_runs.runs_of(ctx, set_id), ref, runner.registry)
scored = _deps.eval_scored(set_id, ref, stamp)
if not scored.findings:
    st.warning(f"{ref} scores none of the set's findings.")
    st.stop()
finding = c3.selectbox("Finding", scored.findings, key="fc_finding")
spec = scored.spec
force = threshold_sets.in_force(ctx, spec)
in_force = force.thresholds.get(finding, 0.5)
c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
what_if = c1.toggle("What-if threshold", key="fc_what_if")
threshold = in_force
if what_if:
    # a number, not a slider: calibrated operating points lie between 0.001 and 0.2, finer than a slider's steps
    threshold = c2.number_input("Threshold", 0.0, 1.0, float(in_force), 0.001, format="%.4f", key=f"fc_thr_{ref}_{finding}")
origin = _table.plain(force.source) + (f"; {_table.plain(force.note)}" if force.note else "")
source = f"what-if; in force: {in_force:.4g} from {origin}" if what_if else f"in force: {origin}"
st.caption(f"Operating point **{threshold:.4g}** ({source}) · "
           "positive = score at or over it · loss = binary cross-entropy of the score against the label · model "
           f"{spec.model_id} version {spec.version} weights sha256 {spec.weights_sha256} · {RESEARCH_USE}")  # fmt: skip

everything = failure_cases.cases(scored, finding)
if not everything:
    st.warning(f"No image of {info.label} has a result of {ref} and a label for {finding}.")
    st.stop()
values = failure_cases.group_values(everything)
with st.expander("Filter by subgroup", expanded=False):
    cols = st.columns(len(failure_cases.GROUPS))
    filters = {by: col.multiselect(by.capitalize(), values[by], key=f"fc_filter_{by}",
                                   placeholder="all" if values[by] else "not recorded", disabled=not values[by])
               for col, by in zip(cols, failure_cases.GROUPS, strict=True)}  # fmt: skip
shown = failure_cases.only(everything, filters)
n_pos = sum(c.positive for c in shown)
st.markdown(f"{len(shown)} image(s) with a result and a label for {finding}"
            f"{' in this filter' if len(shown) != len(everything) else ''}: {n_pos} positive, "
            f"{len(shown) - n_pos} negative.")  # fmt: skip
view = View(info, ref, stamp, scored, finding, threshold, shown, _deps.registry().resolve(ref).weights_sha256)


# --- tiles, similar cases, the group -------------------------------------------------------------------------------
def _tile(v: View, case: failure_cases.Case, kind: str) -> None:
    t = _deps.failure_tile(v.info.id, case.item.id, v.ref, v.weights_sha256, v.finding)
    if t.jpeg is None:
        st.error(f"Image not shown: {_table.plain(t.note)}")
    else:
        st.image(t.jpeg, width="stretch")
        st.caption(_table.plain(t.note))
    st.markdown(f"**{_table.plain(case.name)}**  \nlabels: {_table.plain(failure_cases.labels_text(case.item))}  \n"
                f"score {case.score:.3g} · loss {case.loss:.3f}")  # fmt: skip
    st.checkbox("Select", key=f"fc_pick_{kind}_{v.key}_{case.item.id}")
    if st.button("Similar cases", key=f"fc_sim_{kind}_{v.key}_{case.item.id}", icon=":material/search:", width="stretch"):
        st.session_state[f"fc_query_{kind}"] = case.item.id


def _similar(v: View, kind: str) -> None:
    """The similar cases of the tile whose "Similar" was pressed last in this gallery."""
    query = st.session_state.get(f"fc_query_{kind}")
    row = next((i for i, it in enumerate(v.scored.items) if it.id == query), None)
    if row is None:
        return
    name = eval_runs.item_name(v.scored.items[row])
    st.subheader(f"Similar cases of {name}", anchor=False)
    k = st.columns([1, 4])[0].selectbox("Neighbours", [5, 10, 20], key=f"fc_k_{kind}")
    try:
        with st.spinner("Embedding the images not embedded yet…"):
            found = failure_cases.similar_cases(ctx, runner, v.scored, v.info, row, v.finding, k)
    except ModelUnavailable as exc:
        st.error(f"Similar cases not searched: {exc.reason}")
        return
    if not found["query_readable"]:
        st.error(f"{name} cannot be read any more, so it cannot be searched.")
        return
    m = found["model"]
    st.caption(f"Nearest first by embedding distance (model {m['id']} version {m['version']} weights sha256 "
               f"{m['weights_sha256']}, layer {found['layer']}); scores of {v.finding} by {v.ref} (weights sha256 "
               f"{v.scored.spec.weights_sha256}) · {RESEARCH_USE}")  # fmt: skip
    for what, rows in (("In this set", found["in_set"]), ("In the whole database", found["in_database"])):
        st.markdown(f"**{what}**")
        if rows:
            st.dataframe([{k2: _table.text(f"{x:.4g}" if isinstance(x, float) else x) for k2, x in r.items()}
                          for r in rows], hide_index=True, width="stretch", key=f"fc_simtab_{kind}_{what}")  # fmt: skip
        else:
            st.caption("No other readable image here.")


def _gallery(v: View, kind: str, found: list[failure_cases.Case], intro: str) -> None:
    st.markdown(intro)
    if not found:
        return
    n_pages = failure_cases.pages(len(found), PAGE_SIZE)
    page = 1
    if n_pages > 1:
        page = st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key=f"fc_page_{kind}_{v.key}")
    on_page = failure_cases.page_of(found, int(page), PAGE_SIZE)
    for start in range(0, len(on_page), COLUMNS):
        for col, case in zip(st.columns(COLUMNS), on_page[start : start + COLUMNS], strict=False):
            with col.container(border=True):
                _tile(v, case, kind)
    _similar(v, kind)
    st.divider()
    whole = f"all {len(found)} in this gallery and filter"
    scope = st.radio("Group", ["ticked tiles", whole], horizontal=True, key=f"fc_scope_{kind}")
    if scope == whole:
        ids = [c.item.id for c in found]
    else:
        ids = [c.item.id for c in found if st.session_state.get(f"fc_pick_{kind}_{v.key}_{c.item.id}")]
    _send_group.render(ctx, user, v.info.id, ids, f"fc_send_{kind}", v.scored, [v.finding])


def _wrong(v: View, positive: bool) -> None:
    """The false negatives (`positive`: labelled positive, scored under the threshold) or false positives."""
    kind, cls, name = ("fn", "positive", "false negative") if positive else ("fp", "negative", "false positive")
    n = sum(c.positive == positive for c in v.cases)
    if not n:
        st.warning(f"No {cls} for {v.finding} among these images: there is no {name} to show.")
        return
    found = (failure_cases.false_negatives if positive else failure_cases.false_positives)(v.cases, v.threshold)
    how = f"labelled {v.finding}, scored under" if positive else f"not labelled {v.finding}, scored at or over"
    _gallery(v, kind, found, f"**{len(found)}** {name}(s) of {n} {cls}s ({how} {v.threshold:.4g}), highest loss first.")


def label_errors(v: View) -> None:
    found, undefined = failure_cases.label_errors(v.cases)
    rule = failure_cases.label_error_rule()
    if undefined is not None:
        st.warning(f"Likely label errors are not defined for {v.finding} here ({undefined}). The rule: {rule}.")
        return
    _gallery(v, "le", found, f"**{len(found)}** likely label error(s): {rule}.")


def embedding_map(v: View) -> None:
    """The set's images on a 2-D map of the classifier's features, coloured by error type; a lasso, a box or a
    cluster selects a group, whose metrics show beside the whole set's and which can go to annotators."""
    shown = [c.item.id for c in v.cases]  # the subgroup filters apply here too
    picked = _embedding_map.render(ctx, set_id=v.info.id, ref=v.ref, finding=v.finding, threshold=v.threshold,
                                   key=f"fc_map_{v.key}", item_ids=shown)  # fmt: skip
    if picked:
        st.divider()
        _send_group.render(ctx, user, v.info.id, list(picked), "fc_send_map", v.scored, [v.finding])


TABS: dict[str, Callable[[View], None]] = {
    "False negatives": lambda v: _wrong(v, True),
    "False positives": lambda v: _wrong(v, False),
    "Likely label errors": label_errors,
    "Embedding map": embedding_map,
}
for tab, render in zip(st.tabs(list(TABS), key="fc_tab", on_change="rerun"), TABS.values(), strict=True):
    if tab.open:
        with tab:
            render(view)
