"""Overrides of the quality gate: a reader who judges a refused image readable records why, and from then on
sees the AI output on it (with a note that the gate was overridden). One row per image, reader and gate model
version, and an audit row, in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Engine, select

from db import audit
from db import engine as dbe
from db.models import GateOverride

MAX_REASON = 500


class OverrideNotSaved(ValueError):
    """An override that cannot be recorded (no reason, or a gate that did not refuse)."""


@dataclass(frozen=True)
class Override:
    reason: str
    at: str  # ISO-8601 UTC


def _key(gate: dict) -> tuple[str, str, str]:
    m = gate["model"]
    return m["id"], m["version"], m["weights_sha256"]


def of_reader(engine: Engine, image_id: int, user_id: int, gate: dict | None) -> Override | None:
    """The reader's override of this gate verdict (this gate model version), or None."""
    if not gate or not gate.get("model"):
        return None
    with dbe.read(engine) as s:
        return of_reader_in(s, image_id, user_id, gate)


def record(engine: Engine, image_id: int, user_id: int, gate: dict, reason: str) -> Override:
    """Store the override with its reason and audit it; the same reader again keeps the first one."""
    reason = (reason or "").strip()
    if not reason:
        raise OverrideNotSaved("give a reason for overriding the quality gate")
    if len(reason) > MAX_REASON:
        raise OverrideNotSaved(f"the reason is longer than {MAX_REASON} characters")
    if gate.get("passed") is not False or not gate.get("model"):
        raise OverrideNotSaved("the quality gate did not refuse this image: there is nothing to override")
    model_id, version, sha = _key(gate)

    def tx(s):
        if (old := of_reader_in(s, image_id, user_id, gate)) is not None:
            return old
        row = GateOverride(image_id=image_id, user_id=user_id, model_id=model_id, model_version=version,
                           weights_sha256=sha, gate_reasons=json.dumps(gate.get("reasons", [])), reason=reason)  # fmt: skip
        s.add(row)
        s.flush()
        # The reader's free text stays in gate_overrides: the audit's details are PHI-free by rule.
        audit.add(s, "gate_overridden", actor_id=user_id, target=f"image {image_id}",
                  details={"model": f"{model_id}@{version}", "gate_reasons": gate.get("reasons", []),
                           "override_id": row.id})  # fmt: skip
        return Override(row.reason, row.created_at.isoformat())

    return dbe.write(engine, tx)


def of_reader_in(s, image_id: int, user_id: int, gate: dict) -> Override | None:
    model_id, version, sha = _key(gate)
    row = s.scalars(select(GateOverride).where(
        GateOverride.image_id == image_id, GateOverride.user_id == user_id, GateOverride.model_id == model_id,
        GateOverride.model_version == version, GateOverride.weights_sha256 == sha,
    )).first()  # fmt: skip
    return None if row is None else Override(row.reason, row.created_at.isoformat())
