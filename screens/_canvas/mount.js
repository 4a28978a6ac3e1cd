// The module's tail (screens/_canvas.py puts HTML and createViewer, from canvas.js and annotate.js, before it):
// a Streamlit components v2 element in the page itself, no frame, one viewer per element.

// Decoded pictures by data URL, shared by every viewer of the tab: a study opened again (another page in between)
// is drawn without decoding its PNG again. The newest KEEP_IMAGES are kept.
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

export default function ({ data, parentElement, setStateValue }) {
  let viewer = VIEWERS.get(parentElement);
  if (!viewer) {
    const markup = document.createElement("template");
    markup.innerHTML = HTML;
    parentElement.appendChild(markup.content);
    const host = { send: setStateValue };
    viewer = { host, ...createViewer(parentElement, host) };
    VIEWERS.set(parentElement, viewer);
  }
  viewer.host.send = setStateValue; // the newest, should Streamlit hand a new one
  viewer.render(data);
  return viewer.destroy;
}
