"""A table whose rows open something (the worklist's studies): a click, Enter or Space on a row reruns the page at
once with the row's index (screens/_pick_table/table.js, a Streamlit components v2 element in the page, no frame).

Streamlit's data grid (st.dataframe with row selection) holds a picked row back 150 ms before the server hears of
it, a quarter of the wait for a study to open. This table has no client-side sorting or column resizing: the page
sorts and filters on the server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import streamlit as st

from screens._element import sent

_HERE = Path(__file__).with_name("_pick_table")
_component = st.components.v2.component(
    "cxr_pick_table", js=(_HERE / "table.js").read_text(), css=(_HERE / "table.css").read_text()
)
_HEADER_PX, _ROW_PX = 38, 35  # as Streamlit's data grid


def pick_table(
    rows: Sequence[Mapping[str, object]],
    *,
    key: str,
    label: str,
    max_rows: int = 20,
    sortable: Sequence[str] = (),
    sorted_by: str | None = None,
    descending: bool = True,
) -> None:
    """Show `rows` (one {column: text or number} each, all with the first row's columns); `picked(key, len(rows))`
    reads a row opened since the last run, `sort_clicked(key, sortable)` a `sortable` column's header clicked
    (`sorted_by` shows its arrow). At most `max_rows` rows are visible at once; the table scrolls under its header.
    `label` names the table for screen readers."""
    columns = list(rows[0]) if rows else []
    _component(
        key=key,
        data={
            "columns": columns,
            "rows": [[row[c] for c in columns] for row in rows],
            "label": label,
            "max_height": _HEADER_PX + _ROW_PX * max_rows + 2,
            "sortable": [c for c in sortable if c in columns],
            "sorted_by": sorted_by,
            "descending": descending,
        },
        # declare the triggers; the page reads them where it starts
        on_open_change=lambda: None,
        on_sort_change=lambda: None,
    )


def picked(key: str, n_rows: int) -> int | None:
    """The index of the row the reader opened in table `key` (of `n_rows` rows) for this run, or None. Readable
    before the table is drawn again, so that a page can act on it first."""
    index = sent(key, "open")
    return index if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < n_rows else None


def sort_clicked(key: str, sortable: Sequence[str]) -> str | None:
    """The sortable column whose header the reader clicked in table `key` for this run, or None (a name the page
    did not offer is ignored)."""
    name = sent(key, "sort")
    return name if isinstance(name, str) and name in sortable else None
