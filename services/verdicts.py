"""Readers' verdicts on AI statements (items from screens/_ai_panel: kind, key, model id/version/sha256): the one
place the review screen writes them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from db import engine as dbe
from db import repo


@dataclass(frozen=True)
class Mine:
    """One of the reader's stored verdicts, as plain values (safe to keep after the session closes)."""

    item_kind: str
    item_key: str
    model_id: str
    model_version: str
    decision: str
    reason_code: str | None
    reason_text: str | None


def of_reader(engine: Engine, image_id: int, reader_id: int) -> list[Mine]:
    """The reader's verdicts on one image."""
    with dbe.read(engine) as s:
        return [
            Mine(v.item_kind, v.item_key, v.model_id, v.model_version, v.decision.value, v.reason_code,
                 v.reason_text)  # fmt: skip
            for v in repo.verdicts_of(s, image_id, reader_id)
        ]


def _verdict_in(study_id: int, image_id: int, reader_id: int, item: dict, decision: str,
                reason_code: str | None, reason_text: str | None) -> repo.VerdictIn:  # fmt: skip
    model = item["model"]
    return repo.VerdictIn(
        study_id=study_id, image_id=image_id, reader_id=reader_id, item_kind=item["kind"], item_key=item["key"],
        decision=decision, model_id=model["id"], model_version=model["version"],
        weights_sha256=model["weights_sha256"], reason_code=reason_code, reason_text=reason_text,
    )  # fmt: skip


def save(engine: Engine, study_id: int, image_id: int, reader_id: int,
         changes: Sequence[tuple[dict, str, str | None, str | None]]) -> None:  # fmt: skip
    """Write (item, decision, reason code, note) verdicts in one transaction; reason and note as given."""

    def tx(s):
        for item, decision, code, text in changes:
            repo.upsert_verdict(s, _verdict_in(study_id, image_id, reader_id, item, decision, code, text))

    dbe.write(engine, tx)


def set_decision(engine: Engine, study_id: int, image_id: int, reader_id: int, item: dict, decision: str) -> bool:
    """Change only the decision (a key or a quick button): the reader's reason and note stay. False when the
    verdict already was `decision` (nothing written)."""

    def tx(s):
        old = repo.find_verdict(s, image_id, reader_id, item["kind"], item["key"], item["model"]["id"],
                                item["model"]["version"])  # fmt: skip
        if old is not None and old.decision.value == decision:
            return False
        code, text = (old.reason_code, old.reason_text) if old is not None else (None, None)
        repo.upsert_verdict(s, _verdict_in(study_id, image_id, reader_id, item, decision, code, text))
        return True

    return dbe.write(engine, tx)
