import tempfile
from pathlib import Path

import streamlit as st
from streamlit import config

from screens import _deps, _pacs_tab, _signin, _table
from services import importer

STATUS_LABEL = {"imported": "imported", "duplicate": "duplicate (already stored)", "rejected": "rejected"}

user = _signin.require_page("import_studies")
st.title("Import studies")
ctx = _deps.ctx()
# What a browser can send: the import's own cap, or Streamlit's (server.maxUploadSize) where that is smaller. The
# uploader is given the same number, so its "Limit … per file" and this caption agree.
limit_mb = min(ctx.settings.max_upload_mb, config.get_option("server.maxUploadSize"))
tab_files, tab_pacs = st.tabs(["Files", "PACS"])
tab_files.caption(
    f"DICOM (CR, DX, Secondary Capture), PNG and JPEG · many files at once · at most {limit_mb} MB "
    "per file · duplicates (same SOP Instance UID, or same pixels for PNG/JPEG) are recognised and not imported twice."
)
with tab_files:
    generation = st.session_state.setdefault("upload_generation", 0)
    files = st.file_uploader(
        "Drop files here",
        accept_multiple_files=True,
        key=f"upload_{generation}",
        max_upload_size=limit_mb,
        help="Folders: use `cxr-review import PATH`",
    )
    if files and st.button(f"Import {len(files)} file{'s' * (len(files) != 1)}", type="primary", key="do_import"):
        results = []
        bar = st.progress(0.0, text="Importing…")
        with tempfile.TemporaryDirectory(prefix="cxr-upload-") as tmp:
            for i, f in enumerate(files, 1):
                results.append(
                    importer.import_upload(
                        ctx.engine, ctx.store, Path(tmp) / f"upload-{i}", f.name, f.getbuffer(),
                        max_bytes=limit_mb * 2**20, user_id=user.user_id,
                    )
                )  # fmt: skip
                bar.progress(i / len(files), text=f"Imported {i} of {len(files)}")
        importer.record_batch(ctx.engine, results, actor_id=user.user_id, client=_signin.client())
        st.session_state["last_import"] = [r.to_json() for r in results]
        st.session_state["upload_generation"] = generation + 1  # empties the uploader
        st.rerun()

with tab_pacs:
    _pacs_tab.render(ctx, user)

results = st.session_state.get("last_import")
if results:
    # Files of an upload or instances of a PACS retrieval; a retrieval also lists the series it left out and the
    # studies it could not bring in (then nothing of them was imported).
    files = [r for r in results if r["status"] in STATUS_LABEL]
    failed = [r for r in results if r["status"] == "failed"]
    skipped = [r for r in results if r["status"] == "skipped"]
    counts = {k: sum(r["status"] == k for r in files) for k in STATUS_LABEL}
    st.subheader("Last import")
    st.write(" · ".join([f"{n} {k}" for k, n in counts.items()]
                        + [f"{len(skipped)} series skipped"] * bool(skipped)
                        + [f"{len(failed)} stud{'ies' if len(failed) != 1 else 'y'} not retrieved"] * bool(failed)))  # fmt: skip
    for r in failed:
        st.error(f"Study {r['study_instance_uid']} was not retrieved, nothing of it was imported: {r['reason']}")
    if files:
        summary = importer.batch_summary(r["status"] for r in files)
        if counts["rejected"]:
            st.error(f"{summary} Reason{'s' * (counts['rejected'] != 1)} below.")
        elif counts["imported"]:
            st.success(summary)
        else:
            st.info(summary)
    if files or skipped:
        st.dataframe(
            [
                {
                    "File": r["file"],
                    "Result": STATUS_LABEL[r["status"]],
                    "Reason": _table.text(r["reason"]),
                    "Study": _table.text(r["study_instance_uid"]),
                    "Image (SOP Instance UID)": _table.text(r["sop_instance_uid"]),
                    "Warnings": "; ".join(r["warnings"]),
                }
                for r in files
            ]
            + [
                {
                    "File": f"series ({r['modality'] or 'no modality'}, {r['n_instances'] or 0} instances)",
                    "Result": "skipped (not CR or DX)",
                    "Reason": r["reason"],
                    "Study": r["study_instance_uid"],
                    "Image (SOP Instance UID)": "",
                    "Warnings": "",
                }
                for r in skipped
            ],
            hide_index=True,
            width="stretch",
        )
