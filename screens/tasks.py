"""Labelling tasks (admins and researchers): make a task (images from a worklist filter or an uploaded list of
names, the label schema, readers and adjudicators, readers per image, blinding, queue order), follow each task's
progress per reader, read the agreement between its readers, download its labels (CSV, COCO, DICOM SEG, DICOM SR
of the finals, one reader or the AI) and import readers' annotations from a file. The work is done by
services/labelling_admin.py and the services it calls; this page reads state, calls them and renders."""

import streamlit as st

from db import engine as dbe
from db import repo
from inference.device import DeviceUnavailable
from inference.types import RESEARCH_USE
from screens import _deps, _signin
from services import agreement_report, annotation_import, exports, labelling, labelling_admin, vocabulary

STATUS_LABELS = {"new": "New", "in_review": "In review", "reviewed": "Reviewed"}
IMAGE_SOURCES = {"filter": "Worklist filter", "list": "List of image names"}
NO_TASK = "(no task)"
DB_ERRORS = (dbe.DatabaseBusy, dbe.DatabaseUnavailable)

user = _signin.require_page("tasks")
ctx = _deps.ctx()
st.title("Labelling tasks")
st.caption(f"Readers' tasks, their progress and agreement, exports of their labels · :orange[{RESEARCH_USE}]")
if message := st.session_state.pop("tasks_msg", None):
    st.success(message)


def _error(prefix: str, exc: Exception) -> None:
    st.error(f"{prefix}{_signin.sentence(exc)}")


# --- a new task ------------------------------------------------------------------------------------------------
@st.fragment
def new_task() -> None:
    name = st.text_input("Task name", key="nt_name", max_chars=100)
    source = st.radio(
        "Images", list(IMAGE_SOURCES), format_func=IMAGE_SOURCES.get, horizontal=True, key="nt_source"
    )
    image_ids: list[int] = []
    list_error = None
    if source == "filter":
        c1, c2, c3, c4, c5 = st.columns([1.6, 1, 0.8, 1.4, 1.6])
        status = c1.multiselect("Status", list(STATUS_LABELS), format_func=STATUS_LABELS.get, key="nt_status")
        sex = c2.multiselect("Sex", ["F", "M", "O"], key="nt_sex")
        view = c3.text_input("View", key="nt_view", placeholder="PA, AP…")
        dates = c4.date_input("Study date", value=(), key="nt_dates")
        text = c5.text_input("Search", key="nt_text", placeholder="Patient ID, accession, description")
        flt = repo.WorklistFilter(
            status=tuple(status), sex=tuple(sex), view=view.strip() or None, text=text.strip() or None,
            date_from=dates[0] if len(dates) > 0 else None, date_to=dates[1] if len(dates) > 1 else None,
        )  # fmt: skip
        image_ids = labelling_admin.images_matching(ctx, flt)
        st.markdown(f"**{len(image_ids)}** image{'s' * (len(image_ids) != 1)} match the filter.")
    else:
        upload = st.file_uploader(
            "Image names: a text file with one a line, or a CSV with a column `image` (SOP Instance UID, pixel "
            "sha256 or the imported file name)",
            type=["csv", "txt"], key="nt_list",
        )  # fmt: skip
        if upload is not None:
            try:
                image_ids = labelling_admin.images_named(ctx, labelling_admin.names_in(upload.getvalue()))
            except labelling.TaskError as exc:
                list_error = _signin.sentence(exc)
                st.error(list_error)
            else:
                st.markdown(f"**{len(image_ids)}** image{'s' * (len(image_ids) != 1)} named, all stored.")

    st.markdown("**Label schema**")
    findings = st.multiselect(
        "Findings", vocabulary.FINDINGS, default=list(vocabulary.FINDINGS), key="nt_findings"
    )
    boxes = st.multiselect(
        "Box labels", vocabulary.FINDINGS, default=list(vocabulary.FINDINGS), key="nt_boxes"
    )
    structures = st.columns(2)[0].multiselect(
        "Structures (label maps)",
        labelling.STRUCTURES,
        default=list(labelling.STRUCTURES),
        key="nt_structures",
    )
    st.markdown("**Readers**")
    candidates = labelling_admin.reader_candidates(ctx)
    c1, c2 = st.columns(2)
    readers = c1.multiselect(
        "Readers", list(candidates), format_func=lambda n: f"{n} ({candidates[n]})", key="nt_readers"
    )
    adjudicators = c2.multiselect(
        "Adjudicators (set the final labels)", readers, key="nt_adjudicators",
        help="Chosen among the readers.",
    )  # fmt: skip
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    per_image = c1.number_input(
        "Readers per image", min_value=1, max_value=20, value=1, step=1, key="nt_per_image",
        help="1: a single pass, each image read once. 2 or more: each image read by that many readers, for "
        "agreement.",
    )  # fmt: skip
    blinded = c2.checkbox(
        "Blinded", key="nt_blinded", help="A reader sees only their own work until the image has its readers."
    )
    order = c3.selectbox(
        "Queue order", list(labelling.ORDERS), format_func=labelling.ORDERS.get, key="nt_order"
    )
    if not st.button("Create task", type="primary", key="nt_create"):
        return
    if list_error:
        return  # said above; nothing is made
    try:
        task = labelling.create(
            ctx, user, name=name, image_ids=image_ids, readers={r: r in adjudicators for r in readers},
            findings=findings, boxes=boxes, structures=structures, readers_per_image=int(per_image),
            blinded=blinded, queue_order=order,
        )  # fmt: skip
    except labelling.TaskError as exc:
        _error("Task not made: ", exc)
    except DB_ERRORS as exc:
        st.error(f"Task not made: {exc}")
    else:
        st.session_state["tasks_msg"] = (
            f"Task **{task.name}** made: {task.n_images} image{'s' * (task.n_images != 1)}, "
            f"readers {', '.join(task.readers)}."
        )
        st.session_state["tasks_pick"] = task.name
        del st.session_state["nt_name"]
        st.rerun()


# --- progress ---------------------------------------------------------------------------------------------------
def progress(row: labelling_admin.TaskRow) -> None:
    task, p = row.task, row.progress
    st.progress(
        p.done / p.images if p.images else 0.0,
        text=f"{p.done} of {p.images} images done · {p.finals} with final labels",
    )
    st.dataframe(
        [
            {"Reader": name, "Adjudicator": task.readers.get(name, False), "Submitted": n, "Progress": n}
            for name, n in p.per_reader.items()
        ],
        column_config={
            "Progress": st.column_config.ProgressColumn(
                "Submitted of the task's images", min_value=0, max_value=max(p.images, 1), format=f"%d of {p.images}"
            )
        },
        hide_index=True, key=f"tasks_readers_{task.id}",
    )  # fmt: skip


# --- agreement --------------------------------------------------------------------------------------------------
@st.fragment
def agreement(task: labelling.Task) -> None:
    st.subheader("Agreement")
    counts = labelling_admin.submitted_counts(ctx, task.id)
    ready = [r for r, n in counts.items() if n]
    if len(ready) < 2:
        so_far = ", ".join(f"{r} ({n} image{'s' * (n != 1)})" for r, n in counts.items()) or "none yet"
        st.info(
            "Agreement needs two or more readers with submitted readings of the same images. Readers with "
            f"submitted readings so far: {so_far}."
        )
        return
    chosen = st.multiselect("Readers compared", ready, default=ready, key=f"agr_readers_{task.id}")
    if len(chosen) < 2:
        st.info("Pick two or more readers to compare.")
        return
    try:
        report = _deps.agreement(task.id, tuple(chosen), labelling_admin.annotations_stamp(ctx, task.id))
    except agreement_report.AgreementError as exc:
        _error("", exc)
        return
    tables = labelling_admin.agreement_tables(report)
    method = "Cohen's" if report["method"] == "cohen" else "Fleiss'"
    n, who = report["n_images"], "both readers" if len(chosen) == 2 else f"all {len(chosen)} readers"
    st.caption(
        f"{method} kappa per finding over the {n} image{'s' * (n != 1)} {who} submitted, with a 95% bootstrap "
        f"interval · boxes matched at IoU ≥ {report['boxes']['iou_threshold']} · each reader's newest submitted "
        "version counts"
    )
    if not report["n_images"]:
        st.warning("These readers have not submitted any image in common yet.")
        return
    st.markdown("**Findings**")
    st.dataframe(tables["kappa"], hide_index=True, width="stretch", key=f"agr_kappa_{task.id}")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Boxes: F1 per pair of readers**")
        st.dataframe(tables["boxes"], hide_index=True, width="stretch", key=f"agr_boxes_{task.id}")
    with c2:
        st.markdown("**Masks: Dice and HD95 per structure**")
        if tables["masks"]:
            st.dataframe(tables["masks"], hide_index=True, width="stretch", key=f"agr_masks_{task.id}")
        else:
            st.caption("No image has label maps from two of these readers.")
    st.markdown("**Images with the most disagreement**")
    if tables["most_disagreement"]:
        st.dataframe(
            tables["most_disagreement"], hide_index=True, width="stretch", key=f"agr_worst_{task.id}"
        )
    else:
        st.caption("The readers agree on every image they share.")


# --- downloads --------------------------------------------------------------------------------------------------
@st.fragment
def downloads(task: labelling.Task) -> None:
    st.subheader("Downloads")
    c1, c2 = st.columns(2)
    fmt = c1.selectbox("Format", list(labelling_admin.FORMATS), format_func=labelling_admin.FORMATS.get,
                       key="dl_format")  # fmt: skip
    sources = ["final", *(f"reader:{r}" for r in task.readers), "ai"]
    source = c2.selectbox(
        "Source", sources, format_func=labelling_admin.source_label, key=f"dl_source_{task.id}"
    )
    if source == "ai":
        st.caption(
            f"AI output · :orange[{RESEARCH_USE}] Images not analysed yet are analysed first (a few seconds each "
            "without a GPU)."
        )
    if st.button("Build export", key="dl_build", type="primary"):
        bar = st.progress(0.0, text="Analysing the images…") if source == "ai" else None

        def analysed(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Analysed {done} of {total} images")

        try:
            runner = _deps.runner() if source == "ai" else None
            bundle = labelling_admin.export_zip(
                ctx, task, fmt, source, user.user_id, runner, analysed if bar is not None else None
            )
        except (exports.ExportError, DeviceUnavailable) as exc:
            _error("Nothing exported: ", exc)
        except DB_ERRORS as exc:
            st.error(f"Nothing exported: {exc}")
        else:
            st.session_state["tasks_export"] = {
                "task_id": task.id, "format": fmt, "source": source, "file_name": bundle.file_name,
                "data": bundle.data, "results": bundle.results,
            }  # fmt: skip
        if bar is not None:
            bar.empty()
    built = st.session_state.get("tasks_export")
    if not built or built["task_id"] != task.id:
        return
    results = built["results"]
    skipped = [r for r in results if r["status"] != "exported"]
    st.markdown(
        f"{labelling_admin.FORMATS[built['format']]} of the {labelling_admin.source_label(built['source'])}: "
        f"**{len(results) - len(skipped)}** image{'s' * (len(results) - len(skipped) != 1)} exported"
        + (f", **{len(skipped)}** skipped" if skipped else "")
        + ". Each image's status is in manifest.json."
    )
    if skipped:
        st.warning(f"{len(skipped)} image(s) skipped; the reasons are below.")
    st.dataframe(
        [
            {"Image": r["file"], "Status": r["status"], "Files": ", ".join(r["files"]), "Reason": r["reason"] or ""}
            for r in results
        ],
        hide_index=True, width="stretch", key="dl_results",
    )  # fmt: skip
    st.download_button(
        f"Download {built['file_name']}", built["data"], file_name=built["file_name"], mime="application/zip",
        key="dl_zip", on_click="ignore", icon=":material/download:",
    )  # fmt: skip


# --- import -----------------------------------------------------------------------------------------------------
@st.fragment
def import_annotations(task_names: list[str], selected: str | None) -> None:
    upload = st.file_uploader(
        "A labels CSV (columns `image`, `Finding Labels`) or a COCO JSON file",
        type=["csv", "json"],
        key="imp_file",
    )
    c1, c2 = st.columns(2)
    reader = c1.selectbox(
        "Reader", list(labelling_admin.reader_candidates(ctx)), index=None, accept_new_options=True,
        placeholder="A reader's user name (a new name becomes an annotator)", key="imp_reader",
    )  # fmt: skip
    options = [NO_TASK, *task_names]
    task = c2.selectbox(
        "Into task", options, index=options.index(selected) if selected in options else 0, key="imp_task"
    )
    if st.button("Import", key="imp_go", disabled=upload is None or not reader):
        try:
            results = labelling_admin.import_upload(
                ctx, upload.name, upload.getvalue(), reader, None if task == NO_TASK else task, user.user_id
            )
        except annotation_import.ImportFileError as exc:
            _error("Nothing imported: ", exc)
        except DB_ERRORS as exc:
            st.error(f"Nothing imported: {exc}")
        else:
            st.session_state["tasks_import"] = {
                "file": upload.name,
                "results": [r.as_json() for r in results],
            }
            st.rerun()  # the whole page: the progress changed
    last = st.session_state.get("tasks_import")
    if not last:
        return
    if any(r["status"] == "rejected" for r in last["results"]):
        st.error(
            f"Nothing of {last['file']} was applied: a file is applied whole or not at all. The reasons are below."
        )
    else:
        st.success(f"All {len(last['results'])} rows of {last['file']} applied.")
    st.dataframe(
        [{"Where": r["where"], "Image": r["image"], "Result": r["status"], "Reason": r["reason"] or ""}
         for r in last["results"]],
        hide_index=True, width="stretch", key="imp_results",
    )  # fmt: skip


# --- the page ---------------------------------------------------------------------------------------------------
rows = labelling_admin.overview(ctx)
with st.expander("New task", icon=":material/add_task:", expanded=not rows):
    new_task()

st.subheader("Tasks")
names = [r.task.name for r in rows]
if not rows:
    st.info("No labelling tasks yet: make one under New task.")
else:
    st.dataframe(
        [
            {
                "Task": t.name, "Images": p.images, "Done": p.done, "Finals": p.finals,
                "Readers per image": t.readers_per_image, "Blinded": t.blinded, "Order": t.queue_order,
                "Readers": ", ".join(f"{n} (adjudicator)" if adj else n for n, adj in t.readers.items()),
                "Submitted per reader": " · ".join(f"{n} {c}" for n, c in p.per_reader.items()),
            }
            for t, p in ((r.task, r.progress) for r in rows)
        ],
        hide_index=True, width="stretch", key="tasks_table",
    )  # fmt: skip
    if (pick := st.session_state.pop("tasks_pick", None)) in names:
        st.session_state["tasks_selected"] = pick
    selected = st.selectbox("Task", names, key="tasks_selected")
    row = rows[names.index(selected)]
    progress(row)
    agreement(row.task)
    downloads(row.task)

if user.role == "admin":  # the versions are written as the reader's own: only an admin may do that for them
    with st.expander("Import annotations", icon=":material/upload_file:"):
        import_annotations(names, st.session_state.get("tasks_selected"))
