"""The review aggregate: stored AI items, labelling tasks and annotation versions. Each function takes a Session
and never commits (the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import (
    AnnotationStatus,
    AnnotationVersion,
    Image,
    LabellingTask,
    LabellingTaskImage,
    LabellingTaskReader,
    Prediction,
    PredictionItem,
    User,
    Verdict,
)

_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # those with ON CONFLICT DO NOTHING


# --- AI items ----------------------------------------------------------------------------------------------------
def ensure_items(s: Session, prediction_id: int, items: Iterable[dict]) -> dict[tuple[str, str], int]:
    """Store the items of a prediction once ({kind, key, label, score, geometry} each) and return
    {(kind, key): id} of all its items. Items of one prediction never change, so existing rows are kept. The new
    ones go in as one INSERT .. ON CONFLICT DO NOTHING: on PostgreSQL, where another reader's first view stored
    them meanwhile, this unit then loses as a serialization failure and engine.write runs it again (it finds
    them) instead of failing on the unique key. (SQLite writers run one at a time.)"""
    have = items_of(s, [prediction_id]).get(prediction_id, {})
    new: dict[tuple[str, str], dict] = {}
    for it in items:
        if (it["kind"], it["key"]) not in have:
            new.setdefault((it["kind"], it["key"]), {"prediction_id": prediction_id, **it})
    if not new:
        return have
    insert = _INSERT.get(s.get_bind().dialect.name)
    if insert is None:  # another backend: plain INSERTs
        rows = [PredictionItem(**fields) for fields in new.values()]
        s.add_all(rows)
        s.flush()
        return have | {(r.kind, r.key): r.id for r in rows}
    s.execute(
        insert(PredictionItem).on_conflict_do_nothing(index_elements=["prediction_id", "kind", "key"]),
        list(new.values()),
    )
    return items_of(s, [prediction_id]).get(prediction_id, {})


def items_of(s: Session, prediction_ids: Iterable[int]) -> dict[int, dict[tuple[str, str], int]]:
    """{prediction id: {(kind, key): item id}} of the stored items of these predictions, in one query
    (a prediction without stored items is absent)."""
    ids = list(prediction_ids)
    out: dict[int, dict[tuple[str, str], int]] = {}
    if not ids:
        return out
    item = PredictionItem
    rows = s.execute(
        select(item.prediction_id, item.kind, item.key, item.id).where(item.prediction_id.in_(ids))
    )
    for prediction_id, kind, key, item_id in rows:
        out.setdefault(prediction_id, {})[(kind, key)] = item_id
    return out


def predictions_of(s: Session, pixel_sha256: str, task: str | None = None) -> list[Prediction]:
    q = select(Prediction).where(Prediction.pixel_sha256 == pixel_sha256)
    if task is not None:
        q = q.where(Prediction.task == task)
    return list(s.scalars(q.order_by(Prediction.id)))


def rejections_per_image(s: Session, image_ids: list[int]) -> dict[int, int]:
    """How many AI statements on each image some reader rejected."""
    rows = s.execute(
        select(Verdict.image_id, func.count())
        .where(Verdict.image_id.in_(image_ids), Verdict.decision == "reject")
        .group_by(Verdict.image_id)
    )
    return {image_id: n for image_id, n in rows}


# --- labelling tasks ---------------------------------------------------------------------------------------------
def add_task(
    s: Session,
    *,
    name: str,
    schema: str,
    readers_per_image: int,
    blinded: bool,
    queue_order: str,
    created_by_id: int,
    images: dict[int, float],
    readers: dict[int, bool],
) -> LabellingTask:
    """A task with its images ({image id: queue priority}) and readers ({user id: adjudicator})."""
    task = LabellingTask(
        name=name, schema=schema, readers_per_image=readers_per_image, blinded=blinded,
        queue_order=queue_order, created_by_id=created_by_id,
    )  # fmt: skip
    s.add(task)
    s.flush()
    s.add_all(LabellingTaskImage(task_id=task.id, image_id=i, priority=p) for i, p in images.items())
    s.add_all(LabellingTaskReader(task_id=task.id, user_id=u, adjudicator=a) for u, a in readers.items())
    s.flush()
    return task


def task_by_name(s: Session, name: str) -> LabellingTask | None:
    return s.scalar(select(LabellingTask).where(LabellingTask.name == name))


def tasks(s: Session) -> list[LabellingTask]:
    return list(s.scalars(select(LabellingTask).order_by(LabellingTask.id)))


def tasks_of_reader(s: Session, user_id: int) -> list[tuple[LabellingTask, bool]]:
    """(task, adjudicator) for every task the user reads."""
    rows = s.execute(
        select(LabellingTask, LabellingTaskReader.adjudicator)
        .join(LabellingTaskReader, LabellingTaskReader.task_id == LabellingTask.id)
        .where(LabellingTaskReader.user_id == user_id)
        .order_by(LabellingTask.id)
    )
    return [(t, a) for t, a in rows]


def task_images(s: Session, task_id: int) -> list[int]:
    """Image ids of a task in queue order (ties by id)."""
    return list(
        s.scalars(
            select(LabellingTaskImage.image_id)
            .where(LabellingTaskImage.task_id == task_id)
            .order_by(LabellingTaskImage.priority, LabellingTaskImage.image_id)
        )
    )


def task_image_count(s: Session, task_id: int) -> int:
    return s.scalar(select(func.count()).where(LabellingTaskImage.task_id == task_id))


def task_readers(s: Session, task_id: int) -> dict[str, tuple[int, bool]]:
    """{user name: (user id, adjudicator)} of a task."""
    rows = s.execute(
        select(User.username, User.id, LabellingTaskReader.adjudicator)
        .join(LabellingTaskReader, LabellingTaskReader.user_id == User.id)
        .where(LabellingTaskReader.task_id == task_id)
    )
    return {name: (uid, adj) for name, uid, adj in rows}


# --- annotation versions -----------------------------------------------------------------------------------------
def add_version(s: Session, **fields) -> AnnotationVersion:
    row = AnnotationVersion(**fields)
    s.add(row)
    s.flush()
    return row


def _line(image_id: int, task_id: int | None, reader_id: int | None):
    """The versions of one line: a reader's work (reader_id given) or the image's finals (reader_id None)."""
    conds = [AnnotationVersion.image_id == image_id]
    conds.append(
        AnnotationVersion.task_id.is_(None) if task_id is None else AnnotationVersion.task_id == task_id
    )
    if reader_id is None:
        conds.append(AnnotationVersion.status == AnnotationStatus.final)
    else:
        conds += [
            AnnotationVersion.reader_id == reader_id,
            AnnotationVersion.status != AnnotationStatus.final,
        ]
    return conds


def head(s: Session, image_id: int, task_id: int | None, reader_id: int | None) -> AnnotationVersion | None:
    """The newest version of a line (reader_id None: the final line)."""
    return s.scalar(
        select(AnnotationVersion)
        .where(*_line(image_id, task_id, reader_id))
        .order_by(AnnotationVersion.id.desc())
        .limit(1)
    )


def history(s: Session, image_id: int, task_id: int | None, reader_id: int | None) -> list[AnnotationVersion]:
    return list(
        s.scalars(
            select(AnnotationVersion)
            .where(*_line(image_id, task_id, reader_id))
            .order_by(AnnotationVersion.id)
        )
    )


def heads(s: Session, task_id: int | None, image_ids: Iterable[int] | None = None) -> list[AnnotationVersion]:
    """The newest version of every line of a task (readers' lines and finals), oldest line first."""
    newest = (
        select(func.max(AnnotationVersion.id))
        .where(
            AnnotationVersion.task_id.is_(None) if task_id is None else AnnotationVersion.task_id == task_id
        )
        .group_by(
            AnnotationVersion.image_id,
            AnnotationVersion.reader_id,
            AnnotationVersion.status == AnnotationStatus.final,
        )
    )
    if image_ids is not None:
        newest = newest.where(AnnotationVersion.image_id.in_(list(image_ids)))
    # A final line is one per image whoever wrote it: keep only its newest.
    rows = list(
        s.scalars(
            select(AnnotationVersion).where(AnnotationVersion.id.in_(newest)).order_by(AnnotationVersion.id)
        )
    )
    finals: dict[int, AnnotationVersion] = {}
    for r in rows:
        if r.status == AnnotationStatus.final:
            finals[r.image_id] = r
    return [r for r in rows if r.status != AnnotationStatus.final or finals[r.image_id] is r]


def user_names(s: Session, ids: Iterable[int]) -> dict[int, str]:
    return dict(s.execute(select(User.id, User.username).where(User.id.in_(list(ids)))).all())


def image_ref(s: Session, ref: str) -> Image | None:
    """An image named by its SOP Instance UID, its pixel sha256, or the name of the file it was imported from
    (the first imported, when several files had that name)."""
    return (
        s.scalar(select(Image).where(Image.sop_instance_uid == ref))
        or s.scalar(select(Image).where(Image.pixel_sha256 == ref.lower()).order_by(Image.id).limit(1))
        or s.scalar(select(Image).where(Image.original_filename == ref).order_by(Image.id).limit(1))
    )


def task_ids_of_image(s: Session, image_id: int) -> list[int | None]:
    """The tasks whose annotations cover an image (None: annotations made without a task)."""
    return list(s.scalars(select(AnnotationVersion.task_id).where(AnnotationVersion.image_id == image_id).distinct()))


def task_names(s: Session, ids: Iterable[int]) -> dict[int, str]:
    return dict(s.execute(select(LabellingTask.id, LabellingTask.name).where(LabellingTask.id.in_(list(ids)))).all())
