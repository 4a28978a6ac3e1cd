"""A group of evaluation-set items sent to annotators as a labelling task, or downloaded as CSV: one widget for
every place that selects a group (a gallery's ticked tiles or a whole gallery on the Failure cases page, a
lasso on the embedding map). Folder items not yet in the image store are imported first (once: de-duplicated by
pixel hash). The work is done by services/failure_cases.py and services/labelling.py."""

from __future__ import annotations

import streamlit as st

from db import engine as dbe
from screens import _signin
from services import eval_metrics, eval_sets, failure_cases, labelling, labelling_admin, vocabulary

DB_ERRORS = (dbe.DatabaseBusy, dbe.DatabaseUnavailable)


def render(
    ctx, actor, set_id: int, item_ids: list[int], key: str, scored: eval_metrics.Scored | None = None,
    findings: list[str] | None = None,
) -> None:  # fmt: skip
    """The group's CSV download and the "Send to annotators" form. `scored`: the version whose scores the CSV
    carries (with its provenance); `findings`: the task's label schema offered first (default: the set's)."""
    info = eval_sets.get(ctx, set_id)
    by_id = {it.id: it for it in eval_sets.items(ctx, set_id)}
    items = [by_id[i] for i in dict.fromkeys(item_ids) if i in by_id]
    what = f"{len(items)} image{'s' * (len(items) != 1)}"
    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    c1.markdown(f"**Group: {what}**" + ("" if items else " (tick tiles, or choose the whole gallery)"))
    specs = [scored.spec] if scored is not None else []
    c2.download_button(
        "Group as CSV", failure_cases.group_csv(info, items, scored), disabled=not items, key=f"{key}_csv",
        file_name=eval_metrics.file_name("group", specs, info), mime="text/csv", icon=":material/download:",
    )  # fmt: skip
    known = [f for f in vocabulary.FINDINGS if f in info.findings] or list(vocabulary.FINDINGS)
    offered = [f for f in (findings or known) if f in vocabulary.FINDINGS] or known
    candidates = labelling_admin.reader_candidates(ctx)
    with st.form(f"{key}_form", border=True):
        st.markdown("**Send to annotators** (a labelling task of the group's images)")
        a, b = st.columns(2)
        name = a.text_input("Task name", key=f"{key}_name", max_chars=100)
        readers = b.multiselect("Readers", list(candidates), format_func=lambda n: f"{n} ({candidates[n]})",
                                key=f"{key}_readers")  # fmt: skip
        chosen = st.multiselect("Findings to label", vocabulary.FINDINGS, default=offered, key=f"{key}_findings")
        sent = st.form_submit_button("Send to annotators", type="primary", disabled=not items)
    if not sent:
        return
    try:
        with st.spinner(f"Storing {what} and making the task…"):
            done = failure_cases.send(ctx, actor, info, items, name=name, readers=dict.fromkeys(readers, False),
                                      findings=chosen)  # fmt: skip
    except labelling.TaskError as exc:
        st.error(f"Task not made: {_signin.sentence(exc)}")
        return
    except DB_ERRORS as exc:
        st.error(f"Task not made: {exc}")
        return
    n = done.task.n_images
    st.success(f"Task **{done.task.name}** made: {n} image{'s' * (n != 1)}, readers {', '.join(done.task.readers)}. "
               "Readers find it under Annotate; its progress is on Labelling tasks.")  # fmt: skip
    if done.problems:
        st.warning(f"{len(done.problems)} image(s) left out of the task:")
        st.dataframe([{k: str(v) for k, v in p.items()} for p in done.problems], hide_index=True)
