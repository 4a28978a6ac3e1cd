// A table whose rows open something: a click, Enter or Space on a row sends its index at once (as the trigger
// "open"). In the page itself (Streamlit components v2, no frame): Streamlit's data grid waits 150 ms after a
// row is picked before it tells the server. Cells are set as text, never as HTML.
const ROW_KEYS = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10 };

// A sortable column's header is a button that sends its name (the trigger "sort"): the page sorts on the
// server, over every page of rows, not only the rows shown.
export default function ({ data, parentElement, setTriggerValue }) {
  let wrap = parentElement.querySelector(".pick-table");
  if (!wrap) {
    wrap = document.createElement("div");
    wrap.className = "pick-table";
    parentElement.appendChild(wrap);
  }
  const drawn = JSON.stringify(data);
  if (wrap.drawn === drawn) return; // the same rows as last run: keep the focus and the scroll
  wrap.drawn = drawn;
  wrap.style.maxHeight = `${data.max_height}px`;
  const table = document.createElement("table");
  table.setAttribute("aria-label", data.label);
  const head = table.createTHead().insertRow();
  const sortable = new Set(data.sortable || []);
  for (const name of data.columns) {
    const th = document.createElement("th");
    th.scope = "col";
    if (sortable.has(name)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      const here = data.sorted_by === name;
      button.textContent = name + (here ? (data.descending ? " \u25BC" : " \u25B2") : "");
      button.title = here ? "Sorted by this column: click to reverse" : `Sort by ${name}`;
      if (here) th.setAttribute("aria-sort", data.descending ? "descending" : "ascending");
      button.addEventListener("click", () => setTriggerValue("sort", name));
      th.appendChild(button);
    } else {
      th.textContent = name;
    }
    head.appendChild(th);
  }
  const body = table.createTBody();
  const open = (tr) => setTriggerValue("open", Number(tr.dataset.index));
  data.rows.forEach((cells, index) => {
    const tr = body.insertRow();
    tr.dataset.index = String(index);
    tr.tabIndex = 0;
    for (const cell of cells) tr.insertCell().textContent = cell;
  });
  body.addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) open(tr);
  });
  body.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr");
    if (!tr || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      open(tr);
    } else if (e.key in ROW_KEYS) {
      e.preventDefault();
      const rows = body.rows;
      const to = Math.min(rows.length - 1, Math.max(0, tr.sectionRowIndex + ROW_KEYS[e.key]));
      rows[to].focus();
    }
  });
  wrap.replaceChildren(table);
}
