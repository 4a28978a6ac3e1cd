"""The audit as an admin reads it: filtered rows, and their CSV export (itself audited)."""

from __future__ import annotations

import csv
import datetime as dt
import io

from sqlalchemy import Engine

from db import audit
from db import engine as dbe

COLUMNS = ("id", "at_utc", "action", "actor", "target_user", "target", "details", "client_address")


def rows(
    engine: Engine,
    *,
    actions: tuple[str, ...] = (),
    user: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
    limit: int | None = None,
) -> list[audit.AuditRow]:
    """Newest first; `since` / `until` are whole UTC days, both included."""

    def day(d: dt.date | None, shift: int = 0) -> dt.datetime | None:
        return None if d is None else dt.datetime.combine(d, dt.time(), dt.UTC) + dt.timedelta(days=shift)

    with dbe.read(engine) as s:
        return audit.events(s, actions=actions, user=user or None, since=day(since), until=day(until, 1), limit=limit)


def to_csv(found: list[audit.AuditRow]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(COLUMNS)
    for r in found:
        w.writerow([r.id, r.at.astimezone(dt.UTC).isoformat(), r.action, r.actor or "", r.target_user or "",
                    r.target or "", r.details, r.client_address or ""])  # fmt: skip
    return out.getvalue().encode()


def record_export(engine: Engine, actor_id: int | None, what: str, n_rows: int, client: str | None = None) -> None:
    dbe.write(engine, lambda s: audit.add(s, "export", actor_id=actor_id, target=what,
                                          details={"rows": n_rows}, client_address=client))  # fmt: skip
