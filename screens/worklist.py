import math

import streamlit as st

from db import engine as dbe
from db import repo
from screens import _deps, _signin, _table
from screens._canvas import preload_viewer
from screens._pick_table import pick_table, picked, sort_clicked

SORTS = {
    "Imported": "imported",
    "Study date": "study_date",
    "Age": "age",
    "Sex": "sex",
    "View": "view",
    "Status": "status",
    "Patient ID": "patient_id",
}
STATUS_LABELS = {"new": "New", "in_review": "In review", "reviewed": "Reviewed"}
# the table's column headers that sort the list (on the server, every page), and the sort each one sets
SORT_COLUMNS = {("Imported (UTC)" if label == "Imported" else label): label for label in SORTS}

_signin.require_page("worklist")


# A row opened in the table drawn last opens its study before anything else runs: the worklist is not queried and
# drawn again on the way to the viewer (half the wait of opening a study). The row is an index into the studies that
# table showed, never an id from the browser.
if (row := picked("wl_table", len(st.session_state.get("wl_row_ids", [])))) is not None:
    st.session_state["study_id"] = st.session_state["wl_row_ids"][row]
    st.switch_page("screens/review.py")
# A clicked header sorts by its column, or reverses the order when the list is sorted by it already; set before
# the "Sort by" and "Descending" widgets are drawn, which show it.
if (column := sort_clicked("wl_table", list(SORT_COLUMNS))) is not None:
    if st.session_state.get("wl_sort", "Imported") == SORT_COLUMNS[column]:
        st.session_state["wl_desc"] = not st.session_state.get("wl_desc", True)
    else:
        st.session_state["wl_sort"], st.session_state["wl_desc"] = SORT_COLUMNS[column], False
    st.session_state["wl_page"] = 1
st.title("Worklist")
with st.container(border=True):
    c1, c2, c3, c4 = st.columns([2, 1.2, 1, 2])
    status = c1.multiselect("Status", list(STATUS_LABELS), format_func=STATUS_LABELS.get, key="wl_status")
    sex = c2.multiselect("Sex", ["F", "M", "O"], key="wl_sex")
    view = c3.text_input("View", key="wl_view", placeholder="PA, AP…")
    text = c4.text_input("Search", key="wl_text", placeholder="Patient ID, accession, description")
    c5, c6, c7, c8, c9 = st.columns([1.4, 1, 1, 1.2, 0.8])
    dates = c5.date_input("Study date", value=(), key="wl_dates")
    age_min = c6.number_input("Age from", min_value=0, max_value=130, value=None, step=1, key="wl_age_min")
    age_max = c7.number_input("Age to", min_value=0, max_value=130, value=None, step=1, key="wl_age_max")
    sort_label = c8.selectbox("Sort by", list(SORTS), key="wl_sort")
    descending = c9.toggle("Descending", value=True, key="wl_desc")

flt = repo.WorklistFilter(
    status=tuple(status),
    sex=tuple(sex),
    view=view.strip() or None,
    text=text.strip() or None,
    date_from=dates[0] if len(dates) > 0 else None,
    date_to=dates[1] if len(dates) > 1 else None,
    age_min=age_min,
    age_max=age_max,
)
# The viewer's "next study" walks the same list.
st.session_state["worklist_query"] = (flt, SORTS[sort_label], descending)

page_size = 50
with dbe.read(_deps.ctx().engine) as s:
    total = repo.list_studies(s, flt, limit=0)[1]
    pages = max(1, math.ceil(total / page_size))
    page = st.session_state.get("wl_page", 1)
    page = min(max(1, page), pages)
    rows, total = repo.list_studies(
        s, flt, SORTS[sort_label], descending, offset=(page - 1) * page_size, limit=page_size
    )

table = [
    {
        "Patient ID": _table.text(r.patient_id),
        "Age": _table.text(r.patient_age_years),
        "Sex": _table.text(r.patient_sex),
        "View": _table.text(r.view_position),
        "Modality": _table.text(r.modality),
        "Study date": _table.text(r.study_date),
        "Description": _table.text(r.study_description),
        "Images": r.images,
        "Prior": "has prior" if r.has_prior else "",
        "Status": STATUS_LABELS[r.status],
        "Reviewed by": _table.text(r.reviewed_by),
        "Imported (UTC)": r.imported_at.strftime("%Y-%m-%d %H:%M"),
    }
    for r in rows
]
st.caption(
    f"{total} stud{'y' if total == 1 else 'ies'} · page {page} of {pages} · click a row (or Enter on it) to open "
    "the study, a column's header to sort by it"
)
st.session_state["wl_row_ids"] = [r.study_id for r in rows]
if table:  # a pick reruns the page, whose first lines open the study
    shown = next((c for c, sort in SORT_COLUMNS.items() if sort == sort_label), None)
    pick_table(table, key="wl_table", label="Studies", sortable=list(SORT_COLUMNS), sorted_by=shown,
               descending=descending)  # fmt: skip
n1, n2, n3 = st.columns([1, 1, 6])
if n1.button("◀ Previous page", disabled=page <= 1, key="wl_prev"):
    st.session_state["wl_page"] = page - 1
    st.rerun()
if n2.button("Next page ▶", disabled=page >= pages, key="wl_next"):
    st.session_state["wl_page"] = page + 1
    st.rerun()
if not rows:
    st.info("No studies match. Import studies on the Import page, or clear the filters.")
# Code a browser loads and compiles the first time it draws the viewer's parts: Streamlit's data grid (the DICOM
# header, the AI findings) and the viewer's own module. An empty, hidden one of each here does that while the reader
# reads the list, not after the click on a study.
with st.container(key="wl_viewer_code"):
    st.html("<style>.st-key-wl_viewer_code { display: none; }</style>")
    st.dataframe([{"": ""}], hide_index=True, height=38 + 35)
    preload_viewer(key="wl_viewer_module")
