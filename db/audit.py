"""The append-only audit: one row per security-relevant action. Rows are only ever added (database triggers
refuse UPDATE and DELETE); the caller's transaction holds the row together with the change it records."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from db.models import AuditEvent, User, utcnow

ACTIONS = (
    "sign_in", "sign_out", "sign_in_failed", "lockout", "unlock", "session_ended",
    "user_added", "user_disabled", "user_enabled", "role_changed", "password_reset", "password_changed",
    "import", "import_batch", "export", "model_activated", "model_default", "model_rollback", "thresholds_changed",
    "annotation_saved", "annotations_imported", "task_created", "study_reviewed", "study_reopened",
    "report_saved", "report_signed", "report_amended", "pacs_retrieve", "pacs_store", "gate_overridden",
    "eval_set_created", "eval_run_started", "threshold_set_saved", "threshold_set_activated", "model_shadow_evaluated",
)  # fmt: skip


def add(
    s: Session,
    action: str,
    *,
    actor_id: int | None = None,
    target_user_id: int | None = None,
    target: str | None = None,
    details: dict | None = None,
    client_address: str | None = None,
    at: dt.datetime | None = None,
) -> AuditEvent:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    row = AuditEvent(
        at=at or utcnow(), action=action, actor_id=actor_id, target_user_id=target_user_id,
        target=target[:200] if target else None, details=json.dumps(details or {}, sort_keys=True, default=str),
        client_address=client_address,
    )  # fmt: skip
    s.add(row)
    return row


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: dt.datetime
    action: str
    actor: str | None
    target_user: str | None
    target: str | None
    details: str
    client_address: str | None


def events(
    s: Session,
    *,
    actions: tuple[str, ...] = (),
    user: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> list[AuditRow]:
    """Newest first. `user`: rows where that account acted or was acted upon."""
    actor, target = aliased(User), aliased(User)
    q = (
        select(AuditEvent, actor.username, target.username)
        .outerjoin(actor, AuditEvent.actor_id == actor.id)
        .outerjoin(target, AuditEvent.target_user_id == target.id)
    )
    if actions:
        q = q.where(AuditEvent.action.in_(actions))
    if user:
        q = q.where((actor.username == user) | (target.username == user))
    if since is not None:
        q = q.where(AuditEvent.at >= since)
    if until is not None:
        q = q.where(AuditEvent.at < until)
    q = q.order_by(AuditEvent.id.desc()).limit(limit)
    return [
        AuditRow(e.id, e.at, e.action, who, whom, e.target, e.details, e.client_address)
        for e, who, whom in s.execute(q)
    ]
