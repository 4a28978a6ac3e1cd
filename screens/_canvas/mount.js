// The module's tail (screens/_canvas.py puts HTML and createViewer, from canvas.js and annotate.js, before it):
// a Streamlit components v2 element in the page itself, no frame, one viewer per element.

// Decoded pictures by data URL, shared by every viewer of the tab: a study opened again (another page in between)
// is drawn without decoding its PNG again. The newest KEEP_IMAGES are kept; each viewer also holds the ones it
// shows (canvas.js), so a page with more pictures than that does not decode its own again on every rerun.
const KEEP_IMAGES = 8;
const IMAGES = new Map(); // data URL -> Promise<HTMLImageElement>, oldest first

function loadImage(src) {
  let decoded = IMAGES.get(src);
  if (decoded) {
    IMAGES.delete(src); // to the end: the newest
  } else {
    const img = new Image();
    img.src = src;
    decoded = img.decode().then(() => img);
    decoded.catch(() => IMAGES.get(src) === decoded && IMAGES.delete(src)); // a broken picture is not kept
  }
  IMAGES.set(src, decoded);
  while (IMAGES.size > KEEP_IMAGES) IMAGES.delete(IMAGES.keys().next().value);
  return decoded;
}

const VIEWERS = new WeakMap(); // shadow root -> its viewer

export default function ({ data, parentElement: root, setStateValue }) {
  if (!data) return undefined; // preload_viewer: the module compiled, nothing to draw
  let viewer = VIEWERS.get(root);
  if (!viewer) {
    const markup = document.createElement("template");
    markup.innerHTML = HTML;
    const element = markup.content.firstElementChild; // beside the <style> Streamlit put in the root
    root.appendChild(element);
    const host = { send: setStateValue };
    try {
      viewer = { host, element, ...createViewer(root, host) };
    } catch (err) {
      element.remove();
      throw err;
    }
    VIEWERS.set(root, viewer);
  }
  viewer.host.send = setStateValue; // the newest, should Streamlit hand a new one
  const call = (viewer.calls = (viewer.calls ?? 0) + 1);
  viewer.render(data);
  // Streamlit calls the newest call's cleanup when the element goes. An older call's cleanup can run later too, when
  // newer data overtook that call while the module loaded: by then the newer call uses this viewer, so it stays.
  return () => {
    if (VIEWERS.get(root) !== viewer || viewer.calls !== call) return;
    VIEWERS.delete(root);
    viewer.destroy();
    viewer.element.remove();
  };
}
