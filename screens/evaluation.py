"""Evaluation (researchers and admins): make evaluation sets (a folder with a labels CSV, or stored studies with
the radiologists' verdicts or the annotators' final labels as truth), run model versions on them in the
background with a progress bar, and read the metrics: per finding ROC and PR with 95% bootstrap bands, AUC / AP
with intervals, calibration, the operating point in force, subgroups and two versions side by side. Every figure
downloads as PNG (plotly's toolbar) and its data as CSV. The work is done by services/eval_*.py."""

import streamlit as st

from db import engine as dbe
from db import repo
from inference.types import RESEARCH_USE, SCORE_KINDS
from screens import _deps, _signin, _table
from services import eval_figures, eval_metrics, eval_runs, eval_sets

SOURCES = {"folder": "Folder with a labels CSV", "database": "Stored studies"}
DB_TRUTH = {k: v for k, v in eval_sets.TRUTH_SOURCES.items() if k != "csv"}
GROUPS = ("sex", "age band", "view", "source")
DB_ERRORS = (dbe.DatabaseBusy, dbe.DatabaseUnavailable)
ACTIVE = ("queued", "running")

user = _signin.require_page("evaluation")
ctx, runner = _deps.ctx(), _deps.runner()
st.title("Evaluation")
st.caption(f"Evaluation sets, model runs and their metrics · :orange[{RESEARCH_USE}]")
if message := st.session_state.pop("ev_msg", None):
    st.success(message)
eval_runs.ensure_worker(ctx, runner)  # a run left by a stopped server goes on


def _error(prefix: str, exc: Exception) -> None:
    st.error(f"{prefix}{_signin.sentence(exc)}")


def _csv_button(label: str, rows: list[dict], what: str, key: str, specs: list | None = None) -> None:
    """A CSV download that names its model version(s) and evaluation set, in its lines and its file name."""
    specs = specs or [scored.spec]
    data = eval_metrics.csv_bytes(rows, eval_metrics.provenance(specs, info))
    st.download_button(label, data, file_name=eval_metrics.file_name(what, specs, info), mime="text/csv", key=key,
                       disabled=not rows, icon=":material/download:")  # fmt: skip


# --- new set ---------------------------------------------------------------------------------------------------
with st.expander("New evaluation set", expanded=not eval_sets.list_sets(ctx)):
    name = st.text_input("Set name", key="ev_name", max_chars=100)
    source = st.radio("Images", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="ev_source")
    if source == "folder":
        c1, c2 = st.columns(2)
        folder = c1.text_input("Image folder (on the server)", key="ev_folder")
        labels = c2.text_input(
            "Labels CSV (on the server; NIH style: Image Index, Finding Labels)", key="ev_csv"
        )
        st.caption(f"Both under a dataset folder: {', '.join(map(str, ctx.settings.dataset_roots))}. "
                   "Patient Age, Patient Gender, View Position and Source are used for subgroups when present. "
                   "Rows with unknown findings or images that are not found are left out and listed.")  # fmt: skip
    else:
        c1, c2, c3, c4, c5 = st.columns([1, 0.8, 1.4, 0.8, 0.8])
        sex = c1.multiselect("Sex", ["F", "M", "O"], key="ev_sex")
        view = c2.text_input("View", key="ev_view", placeholder="PA, AP…")
        text = c3.text_input("Search", key="ev_text", placeholder="Patient ID, accession, description")
        age_min = c4.number_input("Age from", 0, 130, value=None, key="ev_age_min")
        age_max = c5.number_input("Age to", 0, 130, value=None, key="ev_age_max")
        truth = st.radio(
            "Ground truth", list(DB_TRUTH), format_func=DB_TRUTH.get, horizontal=True, key="ev_truth"
        )
    if st.button("Create set", type="primary", key="ev_create"):
        try:
            with st.spinner("Reading the images…"):
                if source == "folder":
                    made = eval_sets.from_folder(ctx, name, folder.strip(), labels.strip(), user.user_id,
                                                 confined=True)  # fmt: skip
                else:
                    flt = repo.WorklistFilter(sex=tuple(sex), view=view.strip() or None, text=text.strip() or None,
                                              age_min=age_min, age_max=age_max)  # fmt: skip
                    made = eval_sets.from_database(ctx, name, flt, truth, user.user_id)
        except (eval_sets.EvalSetRefused, *DB_ERRORS) as exc:
            _error("Not created: ", exc)
        else:
            st.session_state["ev_set"] = made.info.id
            what = "New version" if made.new else "Same content as the existing version"
            left = f"; {len(made.left_out)} row(s) left out (listed below)" if made.left_out else ""
            st.session_state["ev_msg"] = f"{what}: {made.info.label}{left}."
            st.rerun()

sets = eval_sets.list_sets(ctx)
if not sets:
    st.info("No evaluation set yet: make one above.")
    st.stop()
by_id = {s.id: s for s in sets}
if st.session_state.get("ev_set") not in by_id:
    st.session_state["ev_set"] = sets[0].id
set_id = st.selectbox("Evaluation set", list(by_id), format_func=lambda i: by_id[i].label, key="ev_set")
info = by_id[set_id]
st.caption(f"Made by {info.created_by or '?'} on {info.created_at:%Y-%m-%d %H:%M} UTC from "
           f"{SOURCES[info.kind].lower()}{' ' + _table.plain(info.folder) if info.folder else ''} · "
           f"version sha256 {info.content_sha256[:12]}… · findings: {', '.join(info.findings)}")  # fmt: skip
if info.report:
    with st.expander(f"{len(info.report)} row(s) left out when the set was made"):
        st.dataframe([{k: _table.text(v) for k, v in r.items()} for r in info.report], hide_index=True)

# --- runs -------------------------------------------------------------------------------------------------------
st.subheader("Runs")
versions = [
    s.ref
    for s in runner.registry.specs()
    if s.task == "classification" and runner.registry.problem(s) is None
]
c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
chosen = c1.multiselect(
    "Model versions", versions, key="ev_models", placeholder="Choose one or more versions"
)
if c2.button("Run", type="primary", key="ev_run", disabled=not chosen):
    try:
        eval_runs.start(ctx, runner, set_id, chosen, user.user_id)
    except (eval_runs.RunRefused, *DB_ERRORS) as exc:
        _error("Not started: ", exc)
    else:
        st.session_state["ev_msg"] = f"Started: {', '.join(chosen)} on {info.name} v{info.version}."
        st.rerun()


def _run_lines(runs: list[eval_runs.RunInfo]) -> None:
    for r in runs[:8]:
        reused = f", {r.n_reused} reused" if r.n_reused else ""
        again = " (resumed after a restart)" if r.resumed else ""
        text = f"{r.ref} · {r.status}{again} · {r.n_done}/{r.n_total}{reused}"
        if r.status == "failed":
            st.error(f"{r.ref}: {r.error}")
        else:
            st.progress(r.fraction, text=text)
        if r.missing:
            st.warning(f"{r.ref}: {len(r.missing)} image(s) could not be read; the metrics leave them out.")
            st.dataframe(r.missing, hide_index=True)


@st.fragment(run_every=1.0)
def live_runs() -> None:
    eval_runs.ensure_worker(ctx, runner)  # a worker that stopped (busy database, a restart) is replaced
    runs = eval_runs.runs_of(ctx, set_id)
    _run_lines(runs)
    if not any(r.status in ACTIVE for r in runs):
        st.rerun()  # the run ended: the metrics below read its results


runs = eval_runs.runs_of(ctx, set_id)
if any(r.status in ACTIVE for r in runs):
    live_runs()
elif runs:
    _run_lines(runs)
else:
    st.caption("No run on this set yet.")

# --- metrics ----------------------------------------------------------------------------------------------------
done, gone = eval_runs.known_versions(runner.registry, eval_runs.finished_versions(ctx, set_id))
if gone:
    st.caption(f"Finished runs of {', '.join(gone)}: no longer installed, so their metrics cannot be shown.")
if not done:
    st.stop()
st.subheader("Metrics")
c1, c2, c3 = st.columns([2, 2, 1])
ref = c1.selectbox("Version", done, key="ev_version")
stamp = eval_runs.results_stamp(runs, ref, runner.registry)
scored = _deps.eval_scored(set_id, ref, stamp)
if not scored.findings:
    st.warning(f"{ref} scores none of the set's findings.")
    st.stop()
finding = c2.selectbox("Finding", scored.findings, key="ev_finding")
n_boot = c3.selectbox("Bootstrap resamples", [200, 1000, 2000], index=1, key="ev_boot")
model = scored.spec.provenance()
force = eval_metrics.thresholds_for(ctx, scored.spec)
st.caption(f"{int(scored.has.sum())} of {len(scored.items)} images have a result of {ref} · scores: "
           f"{SCORE_KINDS[scored.spec.score_kind]} · thresholds in force: "
           f"{force.source} · 95% percentile bootstrap intervals, images resampled · {RESEARCH_USE}")  # fmt: skip
report = _deps.eval_finding(set_id, ref, stamp, finding, force.thresholds.get(finding), n_boot)
key = f"{set_id}_{ref}_{finding}"

tabs = st.tabs(["Summary", "ROC and PR", "Calibration", "Operating point", "Subgroups", "Compare versions"],
               key="ev_tab", on_change="rerun")  # fmt: skip
with tabs[0]:
    rows = _deps.eval_summary(set_id, ref, stamp, tuple(sorted(force.thresholds.items())), n_boot)
    st.dataframe([{k: _table.text(f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                 hide_index=True, width="stretch")  # fmt: skip
    _csv_button("Summary as CSV", rows, "summary", f"ev_csv_sum_{key}")
with tabs[1]:
    if report["undefined"] is not None:
        st.info(f"ROC, AUC, PR and AP of {finding}: not defined ({report['undefined']}).")
    else:
        for column, (kind, name, figure) in zip(
            st.columns(2), (("roc", "ROC", eval_figures.roc), ("pr", "PR", eval_figures.pr)), strict=True
        ):
            with column:
                st.plotly_chart(
                    figure(report, model), config=eval_figures.config(f"{kind}_{finding}"), key=f"ev_{kind}_{key}"
                )
                _csv_button(f"{name} data as CSV", eval_metrics.curve_rows(report, kind), f"{kind}_{finding}",
                            f"ev_csv_{kind}_{key}")  # fmt: skip
with tabs[2]:
    if "calibration" not in report:
        st.info(f"No image with a result and a label for {finding}.")
    else:
        st.plotly_chart(eval_figures.reliability(report, model), config=eval_figures.config(f"reliability_{finding}"),
                        key=f"ev_cal_{key}")  # fmt: skip
        cal = report["calibration"]
        bins = eval_metrics.reliability_rows(report)
        st.markdown(f"ECE **{cal['ece']:.4f}** · Brier score **{report['brier']:.4f}**")
        _csv_button("Reliability bins as CSV", bins, f"reliability_{finding}", f"ev_csv_cal_{key}")
with tabs[3]:
    op = report.get("operating_point")
    if op is None:
        st.info(f"No threshold in force for {finding}, or no labelled image.")
    else:
        st.markdown(f"At the threshold in force (**{op['threshold']:.4g}**, {force.source}):")
        st.dataframe([{k: _table.text(f"{v:.4g}" if isinstance(v, float) else v) for k, v in op.items()}],
                     hide_index=True)  # fmt: skip
        _csv_button("Operating point as CSV", [op], f"operating_point_{finding}", f"ev_csv_op_{key}")
with tabs[4]:
    by = st.radio("Group by", GROUPS, horizontal=True, key="ev_group")
    groups = eval_metrics.subgroups(scored, finding, by, n_boot)
    if not groups:
        st.info(f"No image of this set records its {by}.")
    else:
        if any(g["auc"] is not None for g in groups):
            st.plotly_chart(eval_figures.subgroups(groups, finding, by, model),
                            config=eval_figures.config(f"subgroups_{by}_{finding}"), key=f"ev_sub_{key}_{by}")  # fmt: skip
        if any(g["gap"] for g in groups):
            st.warning("A group's interval lies apart from another's: the gap is wider than the intervals.")
        table = eval_metrics.subgroup_rows(groups)
        st.dataframe(table, hide_index=True)
        _csv_button("Subgroups as CSV", table, f"subgroups_{by}_{finding}", f"ev_csv_sub_{key}_{by}")
with tabs[5]:
    others = [v for v in done if v != ref]
    if not others:
        st.info("Run a second version on this set to compare.")
    else:
        other = st.selectbox("Against", others, key="ev_against")
        b = _deps.eval_scored(
            set_id, other, eval_runs.results_stamp(runs, other, runner.registry)
        )
        both = [f for f in scored.findings if f in b.findings]
        rows = [eval_metrics.compare(scored, b, f, n_boot) for f in both]
        other_stamp = eval_runs.results_stamp(runs, other, runner.registry)
        if finding in b.findings:
            rb = _deps.eval_finding(set_id, other, other_stamp, finding, None, n_boot)
            if report["undefined"] is None and rb["undefined"] is None:
                st.plotly_chart(eval_figures.roc_pair(report, rb, model, b.spec.provenance()),
                                config=eval_figures.config(f"roc_{finding}_{ref}_{other}"),
                                key=f"ev_pair_{key}_{other}")  # fmt: skip
        st.plotly_chart(eval_figures.comparison(rows, model, b.spec.provenance()),
                        config=eval_figures.config(f"compare_{ref}_{other}"), key=f"ev_cmp_{set_id}_{ref}_{other}")  # fmt: skip
        table = eval_metrics.comparison_rows(rows, ref, other)
        st.dataframe([{k: _table.text(v) for k, v in r.items()} for r in table], hide_index=True, width="stretch")
        _csv_button("Comparison as CSV", table, "compare", f"ev_csv_cmp_{set_id}_{ref}_{other}", [scored.spec, b.spec])
