"""Report versions: a reader's report of a study as an append-only line of versions (drafts, then one signed
final, then amendments). Each function takes a Session and never commits (the caller owns the transaction)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, fields

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import audit
from db.models import ReportStatus, ReportVersion, Role, User, utcnow

SIGNING_ROLES = (Role.radiologist, Role.admin)  # who signs and who amends


class ReportNotSaved(Exception):
    """A report version that may not be added: the line is signed (locked), the caller's view is stale, or the
    role may not amend. The message is for the user."""


def line(s: Session, study_id: int, reader_id: int) -> list[ReportVersion]:
    """Every version of the reader's report of the study, oldest first."""
    return list(
        s.scalars(
            select(ReportVersion)
            .where(ReportVersion.study_id == study_id, ReportVersion.reader_id == reader_id)
            .order_by(ReportVersion.id)
        )
    )


@dataclass(frozen=True)
class Version:
    """A version as plain values, safe to keep after its session closed."""

    id: int
    study_id: int
    reader_id: int
    author_id: int
    parent_id: int | None
    status: ReportStatus
    amendment: bool
    amendment_reason: str | None
    generated: bool
    text: str
    consistency: str | None
    created_at: dt.datetime
    signed_by_id: int | None
    signed_at: dt.datetime | None


def versions(s: Session, study_id: int, reader_id: int) -> list[Version]:
    """`line` as plain values."""
    return [Version(**{f.name: getattr(v, f.name) for f in fields(Version)}) for v in line(s, study_id, reader_id)]


def latest(s: Session, study_id: int, reader_id: int) -> ReportVersion | None:
    return s.scalar(
        select(ReportVersion)
        .where(ReportVersion.study_id == study_id, ReportVersion.reader_id == reader_id)
        .order_by(ReportVersion.id.desc())
        .limit(1)
    )


def is_locked(version: ReportVersion | Version | None) -> bool:
    return version is not None and version.status == ReportStatus.final


def add(
    s: Session,
    study_id: int,
    reader_id: int,
    author_id: int,
    text: str,
    *,
    parent_id: int | None,
    sign: bool = False,
    amendment_reason: str | None = None,
    generated: bool = False,
    consistency: dict | None = None,
) -> ReportVersion:
    """Add a version to the line (study, reader). `parent_id` is the newest version the author saw (None for the
    first): a stale one is refused, so that nobody saves over a version they did not see. `sign` makes it the
    final, locked version, signed by the author now. An amendment (`amendment_reason` given) is allowed only
    on a signed line, by a radiologist or an admin, and is itself final and signed. Writes an audit row."""
    newest = latest(s, study_id, reader_id)
    if (newest.id if newest else None) != parent_id:
        raise ReportNotSaved("the report was changed meanwhile (another tab or reader): reload to see it")
    amending = amendment_reason is not None
    if amending:
        if not is_locked(newest):
            raise ReportNotSaved("only a signed report is amended; edit and save the draft instead")
        if not amendment_reason.strip():
            raise ReportNotSaved("an amendment needs its reason")
        author = s.get(User, author_id)
        if author is None or author.role not in SIGNING_ROLES:
            raise ReportNotSaved("only a radiologist or an admin amends a signed report")
    elif is_locked(newest):
        raise ReportNotSaved("the report is signed and locked; an amendment is a new version")
    elif sign:
        author = s.get(User, author_id)
        if author is None or author.role not in SIGNING_ROLES:
            raise ReportNotSaved("only a radiologist or an admin signs a report")
    final = sign or amending  # a signature and an amendment are made by the author, now
    now = utcnow()
    row = ReportVersion(
        study_id=study_id, reader_id=reader_id, author_id=author_id, parent_id=parent_id,
        status=ReportStatus.final if final else ReportStatus.draft, amendment=amending,
        amendment_reason=amendment_reason.strip() if amending else None, generated=generated and not final,
        text=text, consistency=None if consistency is None else json.dumps(consistency, sort_keys=True),
        created_at=now, signed_by_id=author_id if final else None, signed_at=now if final else None,
    )  # fmt: skip
    s.add(row)
    s.flush()
    flags = (consistency or {}).get("flags", [])
    audit.add(
        s, "report_amended" if amending else "report_signed" if sign else "report_saved", actor_id=author_id,
        target_user_id=reader_id, target=f"study {study_id}",
        details={"version_id": row.id, "parent_id": parent_id, "flags": len(flags),
                 "unacknowledged": sum(not f.get("acknowledged") for f in flags)},
    )  # fmt: skip
    return row


def consistency_of(version: ReportVersion | Version | None) -> dict | None:
    return None if version is None or version.consistency is None else json.loads(version.consistency)


def usernames(s: Session, ids: set[int]) -> dict[int, str]:
    return dict(s.execute(select(User.id, User.username).where(User.id.in_(ids))).tuples().all())
