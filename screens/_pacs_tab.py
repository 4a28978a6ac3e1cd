"""The Import page's PACS tab: find studies (QIDO-RS), pick, retrieve them through the import's checks. The report is
the page's own "Last import". Logic lives in services.pacs."""

from __future__ import annotations

import streamlit as st

from screens import _signin, _table
from services import pacs


def _label(hit: dict) -> str:
    return " · ".join(
        [hit["study_date"] or "no date", hit["patient_id"] or "no patient ID", hit["study_description"] or "",
         "/".join(hit["modalities"]), f"{hit['n_instances'] if hit['n_instances'] is not None else '?'} images",
         "…" + hit["study_instance_uid"][-10:]]
    )  # fmt: skip


def render(ctx, user) -> None:
    try:
        cfg = pacs.config(ctx.settings)
    except pacs.PacsError as exc:
        st.caption(f"{exc.message[0].upper()}{exc.message[1:]}, then restart the app.")  # not an alert: nothing failed
        return
    st.caption(
        f"PACS (DICOMweb): {cfg.url} · studies with CR or DX images · series of other modalities are left out · "
        f"at most {cfg.max_instances} instances per study · each instance goes through the same checks as a file."
    )
    with st.form("pacs_query_form", border=False):
        c1, c2, c3 = st.columns(3)
        patient_id = c1.text_input("Patient ID", key="pacs_patient_id")
        modality = c2.selectbox("Modality", ["CR or DX", "CR", "DX"], key="pacs_modality")
        since = c3.date_input("From study date", value=None, key="pacs_since", format="YYYY-MM-DD")
        search = st.form_submit_button("Search the PACS", icon=":material/search:", key="pacs_search")
    if search:
        try:
            with st.spinner("Searching the PACS…"):
                hits = pacs.query(cfg, patient_id=patient_id.strip() or None,
                                  modality=None if modality == "CR or DX" else modality,
                                  since=since.strftime("%Y%m%d") if since else None)  # fmt: skip
        except pacs.PacsError as exc:
            st.session_state.pop("pacs_hits", None)
            st.error(f"The search failed: {exc.message}")
        else:
            st.session_state["pacs_hits"] = [h.to_json() for h in hits]
    hits = st.session_state.get("pacs_hits")
    if hits is None:
        return
    if not hits:
        st.info("No study with CR or DX images matches.")
        return
    st.dataframe(
        [{"Study date": _table.text(h["study_date"]), "Patient ID": _table.text(h["patient_id"]),
          "Description": _table.text(h["study_description"]), "Modalities": ", ".join(h["modalities"]),
          "Images": h["n_instances"], "Study Instance UID": h["study_instance_uid"]} for h in hits],
        hide_index=True, width="stretch",
    )  # fmt: skip
    by_uid = {h["study_instance_uid"]: h for h in hits}
    picked = st.multiselect(
        "Studies to retrieve", list(by_uid), format_func=lambda u: _label(by_uid[u]), key="pacs_picked",
        placeholder=f"Pick among {len(hits)} stud{'ies' if len(hits) != 1 else 'y'}",
    )  # fmt: skip
    if picked and st.button(f"Retrieve {len(picked)} stud{'ies' if len(picked) != 1 else 'y'}", type="primary",
                            key="pacs_retrieve"):  # fmt: skip
        lines = []
        bar = st.progress(0.0, text="Retrieving…")
        done = pacs.retrieve_many(ctx, cfg, picked, user_id=user.user_id, client=_signin.client())
        for n, got in enumerate(done, start=1):
            lines += got.lines()
            bar.progress(n / len(picked), text=f"Retrieved {n} of {len(picked)} studies")
        st.session_state["last_import"] = lines
        st.rerun()
