// The annotator's tools on top of the viewer (canvas.js): boxes (draw, move, resize, relabel, delete), a label map
// edited with brush, eraser and polygon fill, undo / redo, per-structure visibility and keyboard shortcuts.
// canvas.js calls in through `editor` (both files are the body of one createViewer, see mount.js); the edited state
// goes back to Python with the viewer's value.
// The label map lives here as one byte per image pixel (0 background, 1.. structures): painting writes those
// bytes and repaints only the touched rectangle of the coloured mask, so a stroke costs the same on any image size.

const HANDLE_PX = 6; // half size of a box's resize handles, in screen px
const MIN_BOX_PX = 3; // a box smaller than this (image px) is a click, not a box
const HISTORY = 100;

const editor = {
  active: false,
  token: null, // the editing session Python opened; a new one reloads the state below
  labels: [], // box labels, in shortcut order (1..9)
  structures: [], // [{value, name, color}]
  label: null, // the label of new boxes
  structure: 1, // the value the brush paints
  size: 12, // brush radius in image px
  boxes: [], // {label, x, y, w, h, item_id?} in image px
  selected: -1,
  hidden: new Set(), // "boxes" or structure names
  map: null, // Uint8Array(w * h)
  maskCanvas: null,
  maskCtx: null,
  maskImage: null, // ImageData of the whole mask canvas
  maskEdited: false,
  maskUrl: null, // the newest PNG of the map, for Python
  polygon: null, // [[x, y], ...] being drawn
  act: null, // the drag in progress
  undo: [],
  redo: [],
  seq: 0, // edits made in this session; Python saves a draft when it sees a new one
  acked: 0, // the newest of them Python has saved (it says so in its args)
  note: "", // shown in the status line: e.g. edits restored after a lost connection
  latencies: [], // pointer event to repaint, ms (read by bench/bench_annotate.py)
};
const el = $;
const rgba = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));

async function editorRender(a) {
  const ann = a.annotate;
  editor.active = !!ann;
  el("edit-tools").hidden = !ann;
  if (!ann) return;
  window.__cxrEditor = editor; // the page's editor, for tests and bench/bench_annotate.py
  editor.backupKey = ann.backup_key ?? null; // none: nothing is saved until the user says so (a final)
  if (ann.token === editor.token) { // our own edits are newer than what Python sends back
    editor.acked = Math.max(editor.acked, ann.acked_seq ?? 0);
    editor.version = ann.version ?? null;
    keepBackup();
    return;
  }
  const backup = readBackup();
  editor.token = ann.token;
  editor.version = ann.version ?? null;
  editor.labels = ann.labels;
  editor.structures = ann.structures;
  editor.label = editor.labels.includes(editor.label) ? editor.label : editor.labels[0] ?? null;
  editor.boxes = ann.boxes.map((b) => ({ ...b }));
  editor.selected = -1;
  editor.polygon = null;
  editor.undo = [];
  editor.redo = [];
  editor.seq = 0;
  editor.acked = 0;
  editor.maskEdited = false;
  editor.maskUrl = null;
  editor.note = "";
  // Edits Python never saved (the connection dropped, then the tab was closed or reloaded) come back from this
  // browser's storage and are sent again, but only onto the version they were made after: a line that moved on
  // meanwhile (another tab, another browser) is not overwritten with older work.
  const restore = backup && backup.token !== ann.token && backup.seq > backup.acked && backup.version === editor.version;
  await loadMap(a.image_width, a.image_height, restore && backup.mask ? backup.mask : ann.mask);
  fillToolbar();
  if (restore) {
    editor.boxes = backup.boxes;
    editor.maskEdited = !!backup.mask;
    editor.maskUrl = backup.mask;
    editor.note = "Unsaved edits from before the connection was lost were restored and saved.";
    changed();
  }
}

// One entry per line (user, task, image) in localStorage while it holds edits the server has not saved: the
// edits, how many of them the server has saved, and the version those saved ones became.
function readBackup() {
  if (!editor.backupKey) return null;
  try { return JSON.parse(localStorage.getItem(editor.backupKey)); } catch (err) { return null; }
}

function keepBackup() {
  if (!editor.backupKey) return;
  try {
    if (editor.seq <= editor.acked) {
      localStorage.removeItem(editor.backupKey); // all saved: nothing to keep
      return;
    }
    localStorage.setItem(editor.backupKey, JSON.stringify({ token: editor.token, seq: editor.seq, acked: editor.acked,
      version: editor.version, boxes: editor.boxes, mask: editor.maskEdited ? editor.maskUrl : null }));
  } catch (err) {
    editor.note = "This browser cannot keep a copy of the edits (storage full or off): they are only on the server.";
  }
}

async function loadMap(w, h, url) {
  editor.map = new Uint8Array(w * h);
  editor.maskCanvas = Object.assign(document.createElement("canvas"), { width: w, height: h });
  editor.maskCtx = editor.maskCanvas.getContext("2d", { willReadFrequently: true });
  editor.maskImage = editor.maskCtx.createImageData(w, h);
  if (url) {
    const img = await loadImage(url);
    const c = Object.assign(document.createElement("canvas"), { width: w, height: h });
    const cx = c.getContext("2d", { willReadFrequently: true });
    cx.drawImage(img, 0, 0);
    const px = cx.getImageData(0, 0, w, h).data;
    for (let i = 0; i < editor.map.length; i++) editor.map[i] = px[i * 4]; // a grey PNG: value in every channel
  }
  repaint(0, 0, w, h);
}

function fillToolbar() {
  const labelSel = el("edit-label"), structSel = el("edit-structure"), vis = el("edit-visible");
  labelSel.replaceChildren(...editor.labels.map((l, i) => new Option(`${i < 9 ? i + 1 + " " : ""}${l}`, l)));
  labelSel.value = editor.label ?? "";
  structSel.replaceChildren(...editor.structures.map((s) => new Option(s.name, s.value)));
  structSel.value = String(editor.structure);
  const names = ["boxes", ...editor.structures.map((s) => s.name)];
  vis.replaceChildren(...names.map((n) => {
    const lab = document.createElement("label");
    const box = Object.assign(document.createElement("input"), { type: "checkbox", checked: !editor.hidden.has(n) });
    box.dataset.name = n;
    box.addEventListener("change", () => {
      box.checked ? editor.hidden.delete(n) : editor.hidden.add(n);
      repaint(0, 0, args.image_width, args.image_height);
      draw();
    });
    lab.append(box, ` ${n}`);
    return lab;
  }));
  el("edit-size").value = editor.size;
  updateUndoButtons();
}

// --- the label map -------------------------------------------------------------------------------------------------
function repaint(x0, y0, x1, y1) {
  const w = args.image_width, data = editor.maskImage.data;
  const colours = {};
  for (const s of editor.structures) if (!editor.hidden.has(s.name)) colours[s.value] = rgba(s.color);
  x0 = Math.max(0, Math.floor(x0)); y0 = Math.max(0, Math.floor(y0));
  x1 = Math.min(w, Math.ceil(x1)); y1 = Math.min(args.image_height, Math.ceil(y1));
  if (x1 <= x0 || y1 <= y0) return;
  for (let y = y0; y < y1; y++) {
    for (let x = x0, i = y * w + x0; x < x1; x++, i++) {
      const c = colours[editor.map[i]], j = i * 4;
      if (c) { data[j] = c[0]; data[j + 1] = c[1]; data[j + 2] = c[2]; data[j + 3] = 255; } else data[j + 3] = 0;
    }
  }
  editor.maskCtx.putImageData(editor.maskImage, 0, 0, x0, y0, x1 - x0, y1 - y0);
}

function dab(cx, cy, erase) {
  const w = args.image_width, h = args.image_height, r = editor.size, v = editor.structure, map = editor.map;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(w - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(h - 1, Math.ceil(cy + r));
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 > r * r) continue;
      const i = y * w + x;
      if (erase) { if (map[i] === v) map[i] = 0; } else map[i] = v;
    }
  }
  grow(editor.act, x0, y0, x1 + 1, y1 + 1);
  repaint(x0, y0, x1 + 1, y1 + 1);
}

function grow(act, x0, y0, x1, y1) {
  act.rect = act.rect ? [Math.min(act.rect[0], x0), Math.min(act.rect[1], y0), Math.max(act.rect[2], x1), Math.max(act.rect[3], y1)]
    : [x0, y0, x1, y1];
}

function strokeTo(p) {
  const a = editor.act, step = Math.max(1, editor.size / 3);
  const d = Math.hypot(p.x - a.last.x, p.y - a.last.y), n = Math.ceil(d / step);
  for (let k = 1; k <= n; k++) dab(a.last.x + ((p.x - a.last.x) * k) / n, a.last.y + ((p.y - a.last.y) * k) / n, a.erase);
  a.last = { x: p.x, y: p.y };
}

function cut(map, [x0, y0, x1, y1]) {
  const w = args.image_width, out = new Uint8Array((x1 - x0) * (y1 - y0));
  for (let y = y0; y < y1; y++) out.set(map.subarray(y * w + x0, y * w + x1), (y - y0) * (x1 - x0));
  return out;
}

function paste(patch, [x0, y0, x1, y1]) {
  const w = args.image_width;
  for (let y = y0; y < y1; y++) editor.map.set(patch.subarray((y - y0) * (x1 - x0), (y - y0 + 1) * (x1 - x0)), y * w + x0);
  repaint(x0, y0, x1, y1);
}

function fillPolygon(points) {
  const w = args.image_width, h = args.image_height;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const rect = [Math.max(0, Math.floor(Math.min(...xs))), Math.max(0, Math.floor(Math.min(...ys))),
    Math.min(w, Math.ceil(Math.max(...xs)) + 1), Math.min(h, Math.ceil(Math.max(...ys)) + 1)];
  const [x0, y0, x1, y1] = rect;
  if (x1 <= x0 || y1 <= y0) return;
  const before = editor.map.slice();
  // Even-odd scanline fill at pixel centres: exact, no antialiasing to threshold.
  for (let y = y0; y < y1; y++) {
    const cy = y + 0.5, hits = [];
    for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
      const [xi, yi] = points[i], [xj, yj] = points[j];
      if ((yi > cy) !== (yj > cy)) hits.push(xi + ((cy - yi) * (xj - xi)) / (yj - yi));
    }
    hits.sort((a, b) => a - b);
    for (let k = 0; k + 1 < hits.length; k += 2) {
      for (let x = Math.max(x0, Math.ceil(hits[k] - 0.5)); x < Math.min(x1, Math.ceil(hits[k + 1] - 0.5)); x++) {
        editor.map[y * w + x] = editor.structure;
      }
    }
  }
  record({ kind: "mask", rect, before: cut(before, rect), after: cut(editor.map, rect) });
  repaint(x0, y0, x1, y1);
  maskChanged();
}

function maskChanged() {
  editor.maskEdited = true;
  const w = args.image_width, h = args.image_height, c = Object.assign(document.createElement("canvas"), { width: w, height: h });
  const cx = c.getContext("2d"), img = cx.createImageData(w, h), d = img.data;
  for (let i = 0; i < editor.map.length; i++) {
    const v = editor.map[i], j = i * 4;
    d[j] = d[j + 1] = d[j + 2] = v;
    d[j + 3] = 255;
  }
  cx.putImageData(img, 0, 0);
  editor.maskUrl = c.toDataURL("image/png");
  changed();
}

// --- boxes ---------------------------------------------------------------------------------------------------------
function boxAt(p) {
  for (let i = editor.boxes.length - 1; i >= 0; i--) {
    const b = editor.boxes[i];
    if (p.x >= b.x && p.x <= b.x + b.w && p.y >= b.y && p.y <= b.y + b.h) return i;
  }
  return -1;
}

function handleAt(p) {
  if (editor.selected < 0 || editor.hidden.has("boxes")) return null;
  const b = editor.boxes[editor.selected], tol = HANDLE_PX / view.s;
  for (const hx of [0, 1]) for (const hy of [0, 1]) {
    if (Math.abs(p.x - (b.x + hx * b.w)) <= tol && Math.abs(p.y - (b.y + hy * b.h)) <= tol) return { hx, hy };
  }
  return null;
}

const clampBox = (b) => {
  const w = args.image_width, h = args.image_height;
  const x = clamp(Math.min(b.x, b.x + b.w), 0, w), y = clamp(Math.min(b.y, b.y + b.h), 0, h);
  const x1 = clamp(Math.max(b.x, b.x + b.w), 0, w), y1 = clamp(Math.max(b.y, b.y + b.h), 0, h);
  return { ...b, x: round2(x), y: round2(y), w: round2(x1 - x), h: round2(y1 - y) };
};

function setBoxes(next, select) {
  record({ kind: "boxes", before: editor.boxes.map((b) => ({ ...b })), after: next.map((b) => ({ ...b })) });
  editor.boxes = next;
  editor.selected = select ?? -1;
  changed();
}

// --- pointer, keys, history ----------------------------------------------------------------------------------------
const EDIT_MODES = ["box", "brush", "erase", "polygon"];
const isEditMode = (m) => editor.active && EDIT_MODES.includes(m);

function editorDown(p) {
  if (mode === "box") {
    const handle = handleAt(p);
    const b = editor.selected >= 0 ? editor.boxes[editor.selected] : null;
    if (handle) editor.act = { kind: "resize", handle, from: { ...b }, start: p };
    else if (!editor.hidden.has("boxes") && boxAt(p) >= 0) {
      editor.selected = boxAt(p);
      editor.act = { kind: "move", from: { ...editor.boxes[editor.selected] }, start: p };
      syncLabel();
    } else {
      editor.selected = -1;
      if (editor.label) editor.act = { kind: "new", start: p };
    }
  } else if (mode === "brush" || mode === "erase") {
    editor.act = { kind: "stroke", erase: mode === "erase", before: editor.map.slice(), last: { x: p.x, y: p.y } };
    dab(p.x, p.y, editor.act.erase);
  } else if (mode === "polygon") {
    const pt = [clamp(p.x, 0, args.image_width), clamp(p.y, 0, args.image_height)];
    editor.polygon = editor.polygon ?? [];
    const first = editor.polygon[0];
    if (first && editor.polygon.length >= 3 && Math.hypot((pt[0] - first[0]) * view.s, (pt[1] - first[1]) * view.s) < HANDLE_PX * 2) {
      closePolygon();
    } else editor.polygon.push(pt);
  }
  requestDraw();
}

function editorMove(p, t0) {
  const a = editor.act;
  if (!a) return;
  if (a.kind === "stroke") strokeTo(p);
  else if (a.kind === "move") {
    const b = editor.boxes[editor.selected];
    Object.assign(b, clampBox({ ...a.from, x: a.from.x + p.x - a.start.x, y: a.from.y + p.y - a.start.y }));
    b.x = clamp(a.from.x + p.x - a.start.x, 0, args.image_width - b.w);
    b.y = clamp(a.from.y + p.y - a.start.y, 0, args.image_height - b.h);
  } else if (a.kind === "resize") {
    const f = a.from, dx = p.x - a.start.x, dy = p.y - a.start.y;
    const nb = { ...f };
    if (a.handle.hx) nb.w = f.w + dx; else { nb.x = f.x + dx; nb.w = f.w - dx; }
    if (a.handle.hy) nb.h = f.h + dy; else { nb.y = f.y + dy; nb.h = f.h - dy; }
    Object.assign(editor.boxes[editor.selected], clampBox(nb));
  } else if (a.kind === "new") a.end = p;
  if (t0 !== undefined) editor.pending = t0;
  requestDraw();
}

function editorUp(p) {
  const a = editor.act;
  editor.act = null;
  if (!a) return;
  if (a.kind === "stroke") {
    if (a.rect) record({ kind: "mask", rect: a.rect, before: cut(a.before, a.rect), after: cut(editor.map, a.rect) });
    maskChanged();
  } else if (a.kind === "new" && a.end) {
    const b = clampBox({ label: editor.label, x: a.start.x, y: a.start.y, w: a.end.x - a.start.x, h: a.end.y - a.start.y });
    if (b.w >= MIN_BOX_PX && b.h >= MIN_BOX_PX) setBoxes([...editor.boxes, b], editor.boxes.length);
  } else if (a.kind === "move" || a.kind === "resize") {
    const now = editor.boxes.map((b) => ({ ...b }));
    const before = now.map((b, i) => (i === editor.selected ? a.from : b));
    if (JSON.stringify(before[editor.selected]) !== JSON.stringify(now[editor.selected])) {
      editor.boxes = before;
      setBoxes(now, editor.selected);
    }
  }
  requestDraw();
}

function closePolygon() {
  const pts = editor.polygon;
  editor.polygon = null;
  if (pts && pts.length >= 3) fillPolygon(pts);
  requestDraw();
}

function record(op) {
  editor.undo.push(op);
  if (editor.undo.length > HISTORY) editor.undo.shift();
  editor.redo = [];
  updateUndoButtons();
}

function applyOp(op, forward) {
  if (op.kind === "boxes") {
    editor.boxes = (forward ? op.after : op.before).map((b) => ({ ...b }));
    editor.selected = -1;
    changed();
  } else {
    paste(forward ? op.after : op.before, op.rect);
    maskChanged();
  }
}

function undoRedo(forward) {
  const from = forward ? editor.redo : editor.undo, to = forward ? editor.undo : editor.redo;
  const op = from.pop();
  if (!op) return;
  applyOp(op, forward);
  to.push(op);
  updateUndoButtons();
  draw();
}

function updateUndoButtons() {
  el("edit-undo").disabled = !editor.undo.length;
  el("edit-redo").disabled = !editor.redo.length;
}

function changed() {
  editor.seq += 1;
  keepBackup();
  emit();
}

function syncLabel() {
  const b = editor.boxes[editor.selected];
  if (b) { editor.label = b.label; el("edit-label").value = b.label; }
}

function chooseLabel(label) {
  editor.label = label;
  el("edit-label").value = label;
  const b = editor.boxes[editor.selected];
  if (b && b.label !== label) {
    const next = editor.boxes.map((x, i) => (i === editor.selected ? { ...x, label } : { ...x }));
    setBoxes(next, editor.selected);
    draw();
  }
}

function deleteSelected() {
  if (editor.selected < 0) return;
  setBoxes(editor.boxes.filter((_, i) => i !== editor.selected));
  draw();
}

function editorKey(e) {
  if (!editor.active) return false;
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { undoRedo(e.shiftKey); return true; }
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "y") { undoRedo(true); return true; }
  if (e.ctrlKey || e.metaKey || e.altKey) return false;
  const tools = { b: "box", r: "brush", e: "erase", g: "polygon" };
  if (tools[e.key]) { setMode(tools[e.key]); return true; }
  if (/^[1-9]$/.test(e.key) && mode !== "pan" && mode !== "measure" && mode !== "wl") {
    const n = Number(e.key) - 1;
    if (mode === "box" && editor.labels[n]) chooseLabel(editor.labels[n]);
    else if (mode !== "box" && editor.structures[n]) { editor.structure = editor.structures[n].value; el("edit-structure").value = String(editor.structure); }
    return true;
  }
  if (e.key === "[" || e.key === "]") { setSize(editor.size + (e.key === "]" ? 2 : -2)); return true; }
  if ((e.key === "Delete" || e.key === "Backspace") && mode === "box") { deleteSelected(); return true; }
  if (e.key === "Backspace" && editor.polygon) { editor.polygon.pop(); draw(); return true; }
  if (e.key === "Enter" && editor.polygon) { closePolygon(); return true; }
  if (e.key === "Escape" && editor.polygon) { editor.polygon = null; draw(); return true; }
  return false;
}

function setSize(v) {
  editor.size = clamp(v, 1, 200);
  el("edit-size").value = editor.size;
  el("edit-size-value").textContent = `${editor.size} px`;
  draw();
}

// --- drawing -------------------------------------------------------------------------------------------------------
function editorDrawImageSpace(c) {
  if (!editor.active || !editor.maskCanvas) return;
  c.globalAlpha = 0.45;
  c.drawImage(editor.maskCanvas, 0, 0);
  c.globalAlpha = 1;
}

function editorDrawScreenSpace(c) {
  if (!editor.active) return;
  if (!editor.hidden.has("boxes")) {
    editor.boxes.forEach((b, i) => {
      const [x0, y0] = toScreen(b.x, b.y), [x1, y1] = toScreen(b.x + b.w, b.y + b.h), sel = i === editor.selected;
      c.strokeStyle = sel ? "#ffffff" : "#ff9800";
      c.lineWidth = sel ? 2.5 : 2;
      c.setLineDash([]);
      c.strokeRect(x0, y0, x1 - x0, y1 - y0);
      label(b.label, x0, y0 - 2, sel ? "#ffffff" : "#ff9800");
      if (sel) for (const [hx, hy] of [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) {
        c.fillStyle = "#ffffff";
        c.fillRect(hx - HANDLE_PX / 2, hy - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX);
      }
    });
    const a = editor.act;
    if (a?.kind === "new" && a.end) {
      const [x0, y0] = toScreen(a.start.x, a.start.y), [x1, y1] = toScreen(a.end.x, a.end.y);
      c.strokeStyle = "#ff9800";
      c.setLineDash([5, 4]);
      c.strokeRect(x0, y0, x1 - x0, y1 - y0);
      c.setLineDash([]);
    }
  }
  if (editor.polygon) {
    const colour = editor.structures.find((s) => s.value === editor.structure)?.color ?? "#ffffff";
    c.strokeStyle = c.fillStyle = colour;
    c.lineWidth = 1.5;
    c.beginPath();
    editor.polygon.forEach(([x, y], i) => { const [sx, sy] = toScreen(x, y); i ? c.lineTo(sx, sy) : c.moveTo(sx, sy); });
    if (cursor) { const [sx, sy] = toScreen(cursor.x, cursor.y); c.lineTo(sx, sy); }
    c.stroke();
    for (const [x, y] of editor.polygon) { const [sx, sy] = toScreen(x, y); c.fillRect(sx - 2, sy - 2, 4, 4); }
  }
  if ((mode === "brush" || mode === "erase") && cursor) {
    const [sx, sy] = toScreen(cursor.x, cursor.y);
    c.strokeStyle = mode === "erase" ? "#ff5252" : "#ffffff";
    c.lineWidth = 1;
    c.beginPath();
    c.arc(sx, sy, editor.size * view.s, 0, 2 * Math.PI);
    c.stroke();
  }
  if (editor.pending !== undefined) {
    editor.latencies.push(performance.now() - editor.pending);
    if (editor.latencies.length > 1000) editor.latencies.shift();
    editor.pending = undefined;
  }
}

function editorValue() {
  if (!editor.active) return null;
  return {
    token: editor.token, seq: editor.seq,
    boxes: editor.boxes.map((b) => ({ ...b })),
    mask: editor.maskEdited ? editor.maskUrl : null,
  };
}

el("edit-undo").addEventListener("click", () => undoRedo(false));
el("edit-redo").addEventListener("click", () => undoRedo(true));
el("edit-label").addEventListener("change", (e) => chooseLabel(e.target.value));
el("edit-structure").addEventListener("change", (e) => { editor.structure = Number(e.target.value); });
el("edit-size").addEventListener("input", (e) => setSize(Number(e.target.value)));
el("edit-delete").addEventListener("click", deleteSelected);
// A choice made with the pointer in the toolbar (a label, a structure, the size, a layer shown or hidden) gives the
// focus back to the picture, where the editing keys work; one made with the keyboard leaves it on the control.
el("toolbar").addEventListener("change", (e) => {
  if (!e.target.matches(":focus-visible")) overlay.focus({ preventScroll: true });
});
overlay.addEventListener("dblclick", () => editor.polygon && closePolygon());
