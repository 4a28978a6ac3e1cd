"""Keyboard-first review. The shortcuts themselves are Streamlit's own (`st.button(..., shortcut=...)`), which
ignore keys while a form control has the focus. A click on a checkbox, a radio button or a selectbox option
leaves the focus on that control, so after such a *mouse* click the focus goes back to the page; controls
reached with Tab keep it, and text and number fields are never touched (typing there never triggers a
shortcut). The viewer lets the keys it does not use itself go on to the page (screens/_canvas/canvas.js)."""

from __future__ import annotations

import streamlit as st

_FREE_FOCUS = """<script>
(() => {
  if (window.__cxrFreeFocus) return;
  window.__cxrFreeFocus = true;
  document.addEventListener("pointerup", (e) => {
    const option = !!e.target.closest?.('[role="option"]');
    setTimeout(() => {
      const a = document.activeElement;
      if (!a || a.tagName !== "INPUT") return;
      const choice = a.type === "checkbox" || a.type === "radio";
      const chosen = option && a.getAttribute("role") === "combobox" && a.getAttribute("aria-expanded") !== "true";
      if (choice || chosen) a.blur();
    }, 100);
  }, true);
})();
</script>"""


def enable() -> None:
    """Install the focus helper once per browser tab (idempotent; renders nothing visible)."""
    st.html(_FREE_FOCUS, unsafe_allow_javascript=True)
