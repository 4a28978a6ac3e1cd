"""Readers' verdicts on AI statements (items from screens/_ai_panel: kind, key, model id/version/sha256 and
`item_id`, the stored prediction item judged): the one place the review screen writes them. A verdict records
the item's id and is found by it; one written before items were stored (no id) is found by its natural key
(kind, key, model id and version) and gets the id when the reader writes it again."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
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
    item_id: int | None = None  # the stored item judged; None for a verdict written before items were stored


def finder(mine: Sequence[Mine]) -> Callable[[dict], Mine | None]:
    """item -> the reader's verdict on it among `mine`: the one that points at the item's id, else one written
    before items were stored (no id) with its natural key. An item without an id (its items could not be
    stored) is matched by its natural key alone, as before items existed."""
    by_id = {v.item_id: v for v in mine if v.item_id is not None}
    by_key = {(v.item_kind, v.item_key, v.model_id, v.model_version): v for v in mine}
    old = {k: v for k, v in by_key.items() if v.item_id is None}

    def find(item: dict) -> Mine | None:
        key = (item["kind"], item["key"], item["model"]["id"], item["model"]["version"])
        if item.get("item_id") is None:
            return by_key.get(key)
        return by_id.get(item["item_id"]) or old.get(key)

    return find


def of_reader(engine: Engine, image_id: int, reader_id: int) -> list[Mine]:
    """The reader's verdicts on one image."""
    with dbe.read(engine) as s:
        return [
            Mine(v.item_kind, v.item_key, v.model_id, v.model_version, v.decision.value, v.reason_code,
                 v.reason_text, v.prediction_item_id)  # fmt: skip
            for v in repo.verdicts_of(s, image_id, reader_id)
        ]


def _verdict_in(study_id: int, image_id: int, reader_id: int, item: dict, decision: str,
                reason_code: str | None, reason_text: str | None) -> repo.VerdictIn:  # fmt: skip
    model = item["model"]
    return repo.VerdictIn(
        study_id=study_id, image_id=image_id, reader_id=reader_id, item_kind=item["kind"], item_key=item["key"],
        decision=decision, model_id=model["id"], model_version=model["version"],
        weights_sha256=model["weights_sha256"], reason_code=reason_code, reason_text=reason_text,
        prediction_item_id=item.get("item_id"),
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

    item_id = item.get("item_id")

    def tx(s):
        old = repo.find_verdict(s, image_id, reader_id, item["kind"], item["key"], item["model"]["id"],
                                item["model"]["version"], item_id)  # fmt: skip
        if old is not None and item_id is not None and old.prediction_item_id not in (None, item_id):
            old = None  # it judged another stored item with the same natural key (finder() does not show it)
        if old is not None and old.decision.value == decision:
            return False
        code, text = (old.reason_code, old.reason_text) if old is not None else (None, None)
        repo.upsert_verdict(s, _verdict_in(study_id, image_id, reader_id, item, decision, code, text))
        return True

    return dbe.write(engine, tx)


@dataclass(frozen=True)
class Judged:
    """A reader's verdict as the researcher sees it: who, on what, when."""

    reader: str
    item_kind: str
    item_key: str
    model: str
    decision: str
    reason_code: str | None
    reason_text: str | None
    at: dt.datetime


def on_image(engine: Engine, image_id: int) -> list[Judged]:
    """Every reader's current verdicts on one image (their history is in verdict_events), newest first."""
    with dbe.read(engine) as s:
        return [
            Judged(name, v.item_kind, v.item_key, f"{v.model_id}@{v.model_version}", v.decision.value, v.reason_code,
                   v.reason_text, v.updated_at)  # fmt: skip
            for v, name in repo.verdicts_on_image(s, image_id)
        ]
