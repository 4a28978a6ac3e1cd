"""Admin: the append-only audit (sign-ins and failures, lockouts, account changes, imports, exports, model and
threshold changes), filtered, and exported as CSV (the export is audited too)."""

import datetime as dt

import streamlit as st

from db import audit
from screens import _deps, _signin
from services import audit_log

admin = _signin.require_page("audit")
engine = _deps.ctx().engine
st.title("Audit")
st.caption("Every row is kept: the database refuses changes and deletions. Times in UTC.")
c1, c2, c3 = st.columns([2, 1, 1.4])
actions = c1.multiselect("Actions", audit.ACTIONS, key="audit_actions")
user = c2.text_input("User", key="audit_user", placeholder="actor or target")
days = c3.date_input("Days (UTC)", value=(), key="audit_days")
flt = {
    "actions": tuple(actions), "user": user.strip() or None,
    "since": days[0] if len(days) > 0 else None, "until": days[1] if len(days) > 1 else (days[0] if days else None),
}  # fmt: skip
shown = 500
found = audit_log.rows(engine, **flt)
st.caption(f"{len(found)} row{'s' * (len(found) != 1)}" + (f" · the newest {shown} shown" if len(found) > shown else ""))
st.dataframe(
    [
        {"at (UTC)": r.at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"), "action": r.action,
         "actor": r.actor or "", "target user": r.target_user or "", "target": r.target or "", "details": r.details,
         "client": r.client_address or ""}
        for r in found[:shown]
    ],
    hide_index=True, width="stretch",
)  # fmt: skip
st.download_button(
    "Export CSV", audit_log.to_csv(found), file_name=f"cxr-review-audit-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}.csv",
    mime="text/csv", key="audit_export",
    on_click=lambda: audit_log.record_export(engine, admin.user_id, "audit.csv", len(found), _signin.client()),
)  # fmt: skip
