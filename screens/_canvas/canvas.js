// The viewer, one per mount: the body of createViewer(root, host) in mount.js, which screens/_canvas.py assembles
// with annotate.js into one module. `root` is the viewer's shadow root (viewer.html in it); `host.send(name, value)`
// sets the element's state in Python. `args` are the render args: the element's data.

const $ = (id) => root.getElementById(id);
const stage = $("stage"), imageCanvas = $("image"), overlay = $("overlay"), statusLine = $("status");
const imageCtx = imageCanvas.getContext("2d"), ctx = overlay.getContext("2d");
// The compare pane: a second picture in the same pixel frame, drawn with the same view (so it follows every zoom,
// pan and window preview without a round trip to Python); the pointer's image point is marked in the other pane.
const stage2 = $("stage2"), image2 = $("image2"), overlay2 = $("overlay2");
const image2Ctx = image2.getContext("2d"), ctx2 = overlay2.getContext("2d");
const overlays = [overlay, overlay2];
const wlFuncs = root.querySelectorAll("#wl feFuncR, #wl feFuncG, #wl feFuncB");
const modeButtons = root.querySelectorAll("button[data-mode]");
const wlButton = root.querySelector('button[data-mode="wl"]');

const MEASURE_COLOR = "#ffd400";
const CLICK_SLOP_PX = 4; // a press that moves less than this is a click (click, click measuring)
const CURSORS = { pan: "grab", measure: "crosshair", wl: "move", box: "crosshair", brush: "crosshair", erase: "crosshair", polygon: "crosshair" };

let args = null; // the applied render args
let identity = null;
let picture = null; // {img, window}: the displayed PNG and the window the server rendered it with
let layers = []; // render args' layers with their decoded images
let compare = null; // {img, caption, windowed}: the second pane's picture, or null for one pane
let cursorPane = null; // the overlay the pointer is over
let view = null; // screen (CSS px) = image px * s + (tx, ty)
let fitted = true; // the view follows the viewer's size until the reader zooms or pans
let mode = "pan";
let measurements = []; // {x0, y0, x1, y1} in image px
let draft = null; // the measurement being drawn
let drag = null;
let cursor = null; // image px under the pointer
let shownWindow = null; // previewed window; differs from picture.window during and after a W/L drag
let requestedWindow = null; // the window last sent to Python
let renderSeq = 0;
let drawQueued = false;
let held = new Map(); // data URL -> Promise<HTMLImageElement> of the pictures shown now (see loadImage in mount.js)

const dpr = () => window.devicePixelRatio || 1;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const round2 = (v) => Math.round(v * 100) / 100;
const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));

function render(a) {
  onRender(a).catch((err) => {
    statusLine.textContent = `Cannot show this image: ${err.message}`;
  });
}

async function onRender(a) {
  const seq = ++renderSeq;
  // Sized before the pictures decode, so that the page does not move when they are drawn.
  for (const st of [stage, stage2]) st.style.height = `${a.view_height}px`;
  const srcs = [a.image, ...a.layers.map((l) => l.png), ...(a.compare ? [a.compare.image] : [])];
  const imgs = await Promise.all(srcs.map((src) => held.get(src) ?? loadImage(src)));
  if (seq !== renderSeq) return; // a newer render arrived while these decoded
  held = new Map(srcs.map((src, i) => [src, Promise.resolve(imgs[i])]));
  if (a.image_id !== identity) {
    identity = a.image_id;
    measurements = [];
    draft = null;
    requestedWindow = null;
    fitted = true;
  }
  args = a;
  picture = { img: imgs[0], window: a.window };
  if (drag?.kind !== "wl") shownWindow = a.window;
  layers = a.layers.map((l, i) => ({ ...l, img: imgs[i + 1] }));
  compare = a.compare ? { ...a.compare, img: imgs[imgs.length - 1] } : null;
  await editorRender(a); // annotate.js: the editing tools, when Python asks for them
  if (seq !== renderSeq) return;
  wlButton.disabled = !(a.window && a.value_range);
  if ((mode === "wl" && wlButton.disabled) || (!editor.active && EDIT_MODES.includes(mode))) setMode("pan");
  layout();
}

function layout() {
  stage2.hidden = !compare;
  $("caption1").textContent = compare ? args.compare.current_caption || "" : "";
  $("caption2").textContent = compare ? compare.caption : "";
  for (const c of [imageCanvas, overlay, image2, overlay2]) {
    c.width = Math.round(stage.clientWidth * dpr());
    c.height = Math.round(args.view_height * dpr());
  }
  if (fitted || !view) fit();
  draw();
}

// The column the viewer sits in can change width without the window doing so (the sidebar, a second pane), and
// the pixel ratio without the width (the window moved to another screen, a browser zoom).
let stageWidth = 0;
const resized = new ResizeObserver(() => {
  if (args && stage.clientWidth !== stageWidth) layout();
  stageWidth = stage.clientWidth;
});
resized.observe(stage);
let ratioQuery = null;
function watchRatio() {
  ratioQuery?.removeEventListener("change", ratioChanged);
  ratioQuery = matchMedia(`(resolution: ${dpr()}dppx)`);
  ratioQuery.addEventListener("change", ratioChanged);
}
function ratioChanged() {
  watchRatio();
  if (args) layout();
}
watchRatio();

function destroy() {
  renderSeq++; // a render still decoding its pictures stops there
  resized.disconnect();
  ratioQuery?.removeEventListener("change", ratioChanged);
  if (window.__cxrEditor === editor) delete window.__cxrEditor;
}

const fitScale = () => Math.min(stage.clientWidth / args.image_width, args.view_height / args.image_height);

function fit() {
  const s = fitScale();
  view = { s, tx: (stage.clientWidth - args.image_width * s) / 2, ty: (args.view_height - args.image_height * s) / 2 };
  fitted = true;
}

function zoomAt(sx, sy, factor) {
  const s = clamp(view.s * factor, Math.min(fitScale() / 4, 1 / dpr()), Math.max(fitScale(), 32 / dpr()));
  view = { s, tx: sx - ((sx - view.tx) * s) / view.s, ty: sy - ((sy - view.ty) * s) / view.s };
  fitted = false;
}

function requestDraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    draw();
  });
}

function draw() {
  if (!args) return;
  const r = dpr(), { s, tx, ty } = view, w = args.image_width, h = args.image_height;
  imageCtx.setTransform(1, 0, 0, 1, 0, 0);
  imageCtx.fillStyle = "#000";
  imageCtx.fillRect(0, 0, imageCanvas.width, imageCanvas.height);
  imageCtx.setTransform(s * r, 0, 0, s * r, tx * r, ty * r);
  // Smooth up to 4 device px per image px; beyond, show the pixels themselves.
  imageCtx.imageSmoothingEnabled = ctx.imageSmoothingEnabled = s * r < 4;
  imageCtx.imageSmoothingQuality = ctx.imageSmoothingQuality = "high";
  imageCtx.drawImage(picture.img, 0, 0, w, h);
  applyWindowPreview();

  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  ctx.setTransform(s * r, 0, 0, s * r, tx * r, ty * r);
  for (const l of layers) {
    if (!l.visible) continue;
    ctx.globalAlpha = l.opacity;
    if (l.clip_x < 1) {
      // Swipe: the layer covers the image left of clip_x (a fraction of the width), the original shows right of it.
      const cw = Math.max(0, Math.min(1, l.clip_x)) * w;
      ctx.drawImage(l.img, 0, 0, cw, h, 0, 0, cw, h);
      ctx.globalAlpha = 1;
      ctx.strokeStyle = "#ffd54f";
      ctx.lineWidth = 2 / s;
      ctx.beginPath();
      ctx.moveTo(cw, 0);
      ctx.lineTo(cw, h);
      ctx.stroke();
    } else {
      ctx.drawImage(l.img, 0, 0, w, h);
    }
  }
  ctx.globalAlpha = 1;
  editorDrawImageSpace(ctx);
  // Vector overlays in CSS px so lines and labels stay crisp at any zoom.
  ctx.setTransform(r, 0, 0, r, 0, 0);
  for (const shape of args.shapes) drawShape(shape);
  for (const m of measurements) drawMeasurement(m, false);
  if (draft) drawMeasurement(draft, true);
  editorDrawScreenSpace(ctx);
  if (compare) drawCompare();
  // For tests and for the curious: the view (scale, then offset in CSS px), which the compare pane shares.
  stage.dataset.view = viewText();
  updateStatus();
}

function drawCompare() {
  const r = dpr(), { s, tx, ty } = view;
  image2Ctx.setTransform(1, 0, 0, 1, 0, 0);
  image2Ctx.fillStyle = "#000";
  image2Ctx.fillRect(0, 0, image2.width, image2.height);
  image2Ctx.setTransform(s * r, 0, 0, s * r, tx * r, ty * r);
  image2Ctx.imageSmoothingEnabled = s * r < 4;
  image2Ctx.imageSmoothingQuality = "high";
  image2Ctx.drawImage(compare.img, 0, 0, args.image_width, args.image_height);
  ctx2.setTransform(1, 0, 0, 1, 0, 0);
  ctx2.clearRect(0, 0, overlay2.width, overlay2.height);
  // The same image point in the pane the pointer is not over.
  const other = cursorPane === overlay ? ctx2 : ctx;
  if (cursor && cursorPane) {
    const [x, y] = toScreen(cursor.x, cursor.y);
    other.setTransform(r, 0, 0, r, 0, 0);
    other.strokeStyle = "#00e5ff";
    other.lineWidth = 1;
    other.setLineDash([]);
    other.beginPath();
    other.moveTo(x - 8, y);
    other.lineTo(x + 8, y);
    other.moveTo(x, y - 8);
    other.lineTo(x, y + 8);
    other.stroke();
  }
  stage2.dataset.view = viewText();
}

const viewText = () => [view.s, view.tx, view.ty].map((v) => v.toFixed(4)).join(",");

// The PNG maps [c0 - w0/2, c0 + w0/2] to 0..1; remapping it linearly previews another window (c, w).
function applyWindowPreview() {
  const from = picture.window, to = shownWindow;
  if (!from || !to || (from.center === to.center && from.width === to.width)) {
    imageCanvas.style.filter = image2.style.filter = "none";
    return;
  }
  const slope = from.width / to.width;
  const intercept = (from.center - to.center) / to.width + 0.5 - slope / 2;
  for (const f of wlFuncs) {
    f.setAttribute("slope", slope);
    f.setAttribute("intercept", intercept);
  }
  imageCanvas.style.filter = "url(#wl)";
  image2.style.filter = compare?.windowed ? "url(#wl)" : "none"; // a difference picture is not windowed
}

const toScreen = (x, y) => [x * view.s + view.tx, y * view.s + view.ty];

function label(text, x, y, color) {
  ctx.font = "12px system-ui, sans-serif";
  const w = ctx.measureText(text).width;
  const top = clamp(y - 16, 0, overlay.height / dpr() - 16), left = clamp(x, 0, overlay.width / dpr() - w - 6);
  ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
  ctx.fillRect(left, top, w + 6, 16);
  ctx.fillStyle = color;
  ctx.textBaseline = "middle";
  ctx.fillText(text, left + 3, top + 8);
}

function drawShape(sh) {
  const [x0, y0] = toScreen(sh.x0, sh.y0), [x1, y1] = toScreen(sh.x1, sh.y1);
  ctx.strokeStyle = sh.color;
  ctx.lineWidth = 2;
  ctx.setLineDash([]);
  ctx.beginPath();
  if (sh.type === "rect") ctx.rect(x0, y0, x1 - x0, y1 - y0);
  else {
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
  }
  ctx.stroke();
  if (sh.label) {
    const [x, y] = sh.type === "rect" ? [Math.min(x0, x1), Math.min(y0, y1) - 2] : [(x0 + x1) / 2 + 6, (y0 + y1) / 2 - 4];
    label(sh.label, x, y, sh.color);
  }
}

function measure(m) {
  const sp = args.pixel_spacing_mm; // [row spacing (y), column spacing (x)]
  const dx = m.x1 - m.x0, dy = m.y1 - m.y0;
  return sp ? { length: Math.hypot(dx * sp[1], dy * sp[0]), unit: "mm" } : { length: Math.hypot(dx, dy), unit: "px" };
}

function drawMeasurement(m, isDraft) {
  const [x0, y0] = toScreen(m.x0, m.y0), [x1, y1] = toScreen(m.x1, m.y1);
  ctx.strokeStyle = ctx.fillStyle = MEASURE_COLOR;
  ctx.lineWidth = 1.5;
  ctx.setLineDash(isDraft ? [5, 4] : []);
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
  for (const [x, y] of [[x0, y0], [x1, y1]]) {
    ctx.beginPath();
    ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
    ctx.fill();
  }
  const { length, unit } = measure(m);
  label(`${length.toFixed(1)} ${unit}`, Math.max(x0, x1) + 8, (y0 + y1) / 2 + 8, MEASURE_COLOR);
}

function updateStatus() {
  const sp = args.pixel_spacing_mm;
  const parts = [
    `Zoom ${Math.round(view.s * dpr() * 100)}%`,
    cursor ? `x ${Math.floor(cursor.x)}, y ${Math.floor(cursor.y)}` : "x –, y –",
    sp ? `pixel spacing ${sp[0]} × ${sp[1]} mm` : "no pixel spacing: lengths in pixels",
  ];
  if (shownWindow) parts.push(`W ${fmt(shownWindow.width)} / C ${fmt(shownWindow.center)}`);
  if (editor.active && editor.note) parts.push(editor.note);
  statusLine.textContent = parts.join("   ·   ");
}

function emit() {
  host.send("value", {
      image: identity,
      measurements: measurements.map((m) => {
        const { length, unit } = measure(m);
        return { x0: round2(m.x0), y0: round2(m.y0), x1: round2(m.x1), y1: round2(m.y1), length: round2(length), unit };
      }),
      window: requestedWindow && { center: round2(requestedWindow.center), width: round2(requestedWindow.width) },
      annotation: editorValue(),
  });
}

function setCursors() {
  overlay.style.cursor = CURSORS[mode];
  overlay2.style.cursor = mode === "wl" ? CURSORS.wl : CURSORS.pan; // the compare pane pans, zooms and windows only
}

function setMode(m) {
  mode = m;
  draft = null;
  editor.polygon = null;
  for (const b of modeButtons) b.setAttribute("aria-pressed", String(b.dataset.mode === m));
  setCursors();
  if (args) draw();
}

function clearMeasurements() {
  draft = null;
  if (measurements.length) {
    measurements = [];
    emit();
  }
  draw();
}

function pointer(e) {
  const r = e.currentTarget.getBoundingClientRect(), sx = e.clientX - r.left, sy = e.clientY - r.top;
  return { sx, sy, x: (sx - view.tx) / view.s, y: (sy - view.ty) / view.s };
}

const onImage = (p) => p.x >= 0 && p.y >= 0 && p.x < args.image_width && p.y < args.image_height;

function setDraftEnd(p) {
  draft.x1 = clamp(p.x, 0, args.image_width);
  draft.y1 = clamp(p.y, 0, args.image_height);
}

// A drag across the whole view spans the whole value range, in width (x) and in centre (y).
function draggedWindow(p) {
  const [lo, hi] = args.value_range, perPx = (hi - lo) / stage.clientWidth;
  return {
    center: clamp(drag.from.center + (p.sy - drag.sy) * perPx, lo, hi),
    width: clamp(drag.from.width + (p.sx - drag.sx) * perPx, (hi - lo) / 1000, 2 * (hi - lo)),
  };
}

function pointerDown(e) {
  if (!args || e.button > 1) return;
  e.preventDefault(); // no text selection or middle-button autoscroll; so focus by hand for the shortcuts
  const pane = e.currentTarget;
  pane.focus({ preventScroll: true });
  pane.setPointerCapture(e.pointerId);
  const p = pointer(e);
  if (e.button === 1 || mode === "pan" || (pane === overlay2 && mode !== "wl")) {
    drag = { kind: "pan", sx: p.sx, sy: p.sy };
    pane.style.cursor = "grabbing";
  } else if (isEditMode(mode)) {
    drag = { kind: "edit" };
    editorDown(p);
  } else if (mode === "measure") {
    if (!draft) {
      const x = clamp(p.x, 0, args.image_width), y = clamp(p.y, 0, args.image_height);
      draft = { x0: x, y0: y, x1: x, y1: y, sx: p.sx, sy: p.sy, clicked: false };
    }
    drag = { kind: "measure" };
  } else if (shownWindow) {
    drag = { kind: "wl", sx: p.sx, sy: p.sy, from: shownWindow };
  }
}

function pointerMove(e) {
  if (!args) return;
  const p = pointer(e);
  cursor = onImage(p) ? p : null;
  cursorPane = e.currentTarget;
  if (drag?.kind === "pan") {
    view.tx += p.sx - drag.sx;
    view.ty += p.sy - drag.sy;
    drag.sx = p.sx;
    drag.sy = p.sy;
    fitted = false;
  } else if (drag?.kind === "wl") {
    shownWindow = draggedWindow(p);
  } else if (drag?.kind === "edit") {
    editorMove(p, e.timeStamp); // latency from the event to the repaint that shows it
  }
  if (draft) setDraftEnd(p);
  requestDraw();
}

function endDrag(e) {
  if (!drag) return;
  const p = pointer(e);
  if (drag.kind === "edit") editorUp(p);
  else if (drag.kind === "measure" && draft) {
    setDraftEnd(p);
    if (Math.hypot(p.sx - draft.sx, p.sy - draft.sy) > CLICK_SLOP_PX) {
      measurements.push({ x0: draft.x0, y0: draft.y0, x1: draft.x1, y1: draft.y1 });
      draft = null;
      emit();
    } else if (draft.clicked) draft = null; // second click on the first point: nothing to measure
    else draft.clicked = true; // first click: the line follows the pointer until the next click
  } else if (drag.kind === "wl" && shownWindow !== drag.from) {
    requestedWindow = shownWindow;
    emit();
  }
  drag = null;
  setCursors();
  requestDraw();
}

function wheel(e) {
  if (!args) return;
  e.preventDefault();
  const p = pointer(e), px = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? stage.clientHeight : 1;
  zoomAt(p.sx, p.sy, Math.exp(-e.deltaY * px * 0.002));
  requestDraw();
}

for (const pane of overlays) {
  pane.addEventListener("pointerdown", pointerDown);
  pane.addEventListener("pointermove", pointerMove);
  pane.addEventListener("pointerup", endDrag);
  pane.addEventListener("pointercancel", endDrag);
  pane.addEventListener("pointerleave", () => {
    cursor = cursorPane = null;
    if (args) requestDraw();
  });
  pane.addEventListener("wheel", wheel, { passive: false });
}

function oneToOne() {
  zoomAt(stage.clientWidth / 2, args.view_height / 2, 1 / dpr() / view.s);
  draw();
}

$("fit").addEventListener("click", () => args && (fit(), draw()));
$("one").addEventListener("click", () => args && oneToOne());
$("clear").addEventListener("click", () => args && clearMeasurements());
for (const b of modeButtons) b.addEventListener("click", () => setMode(b.dataset.mode));

// Keys while the focus is in the viewer. The ones it uses stop here; the others go on to the page, whose shortcuts
// (accept a finding, next study, ...) then work with the focus on the picture, once per press (not repeated while
// held). Typing in the viewer's own fields (the label list) stays there.
const SCROLL_KEYS = new Set([" ", "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "PageUp", "PageDown", "Home", "End"]);
const typing = (el) =>
  el?.tagName === "TEXTAREA" || el?.tagName === "SELECT" ||
  (el?.tagName === "INPUT" && !["checkbox", "radio", "range", "button"].includes(el.type));

root.addEventListener("keydown", (e) => {
  const target = e.composedPath()[0];
  if (typing(target) && !e.ctrlKey && !e.metaKey) {
    e.stopPropagation();
    return;
  }
  if (args && editorKey(e)) {
    e.preventDefault();
    e.stopPropagation();
    return;
  }
  if (overlays.includes(target) && SCROLL_KEYS.has(e.key)) e.preventDefault(); // the picture has the focus, not the page
  if (e.repeat) e.stopPropagation();
  if (!args || e.ctrlKey || e.metaKey || e.altKey) return;
  const actions = {
    f: () => (fit(), draw()),
    1: oneToOne,
    p: () => setMode("pan"),
    m: () => setMode("measure"),
    w: () => !wlButton.disabled && setMode("wl"),
    Escape: () => ((draft = null), draw()),
  };
  if (actions[e.key]) {
    actions[e.key]();
    e.stopPropagation();
  }
});
