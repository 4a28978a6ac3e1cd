// Posts to the app's own endpoint (same origin), whose answer sets or clears the HttpOnly sign-in cookie; the next
// page load sends it with the websocket handshake and the server resumes the session. A Streamlit components v2
// element in the page, no frame: the sign-in does not wait for a frame to load. This script never sees the session
// token: "set" carries a one-time grant, "clear" the sha256 of the token to clear.
const SENT = new WeakMap(); // element -> the request it made, so that a redraw with the same data does not repeat it

export default function ({ data, parentElement, setStateValue }) {
  const request = JSON.stringify(data);
  if (!data || SENT.get(parentElement) === request) return;
  SENT.set(parentElement, request);
  fetch(data.url, {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: { "Content-Type": "text/plain" }, body: data.grant,
    signal: AbortSignal.timeout(15000), // a server that never answers is a refusal, not an endless "Signing in…"
  }).then((r) => r.ok, () => false).then((ok) => {
    // Only "set" answers: the first page waits for it. Clearing must not rerun the page.
    if (data.action === "set") setStateValue("value", ok);
  });
}
