"""Labelling tasks: a set of images, a label schema, readers (some of them adjudicators), how many readers each
image needs, blinded or not, and the order of the queue. A reader presses "next" and gets the first image of
the queue that still needs them; the order is fixed when the task is made."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import accounts, audit
from db import annotations as repo
from db import engine as dbe
from db.models import AnnotationStatus, Image, LabellingTask, Role, utcnow
from services import annotations, threshold_sets, vocabulary
from services.context import Context

ORDERS = {
    "random": "random (fixed per task)",
    "uncertainty": "AI uncertainty: scores nearest the operating point first",
    "model_disagreement": "disagreement between two classifier versions first",
    "rejected_first": "images whose AI statements a radiologist rejected first",
}
STRUCTURES = tuple(vocabulary.STRUCTURES.values())
CLAIM = dt.timedelta(hours=2)  # a draft this recent holds its image for its reader


class TaskError(ValueError):
    """A task that cannot be made or read as asked, with the reason (nothing was written)."""


@dataclass(frozen=True)
class Task:
    id: int
    name: str
    findings: tuple[str, ...]
    boxes: tuple[str, ...]
    structures: tuple[str, ...]
    readers_per_image: int
    blinded: bool
    queue_order: str
    readers: dict[str, bool]  # name: adjudicator
    n_images: int


def _task(s: Session, row: LabellingTask) -> Task:
    schema = json.loads(row.schema)
    readers = {name: adj for name, (_, adj) in repo.task_readers(s, row.id).items()}
    return Task(
        row.id, row.name, tuple(schema["findings"]), tuple(schema["boxes"]), tuple(schema["structures"]),
        row.readers_per_image, row.blinded, row.queue_order, readers, repo.task_image_count(s, row.id),
    )  # fmt: skip


def get(ctx: Context, name: str) -> Task:
    with dbe.read(ctx.engine) as s:
        row = repo.task_by_name(s, name)
        if row is None:
            raise TaskError(f"no labelling task named {name!r}")
        return _task(s, row)


def by_id(s: Session, task_id: int) -> Task:
    return _task(s, s.get(LabellingTask, task_id))


def all_tasks(ctx: Context) -> list[Task]:
    with dbe.read(ctx.engine) as s:
        return [_task(s, t) for t in repo.tasks(s)]


def tasks_of(ctx: Context, user_id: int) -> list[Task]:
    with dbe.read(ctx.engine) as s:
        return [_task(s, t) for t, _ in repo.tasks_of_reader(s, user_id)]


def create(
    ctx: Context,
    actor,
    *,
    name: str,
    image_ids: list[int],
    readers: dict[str, bool],
    findings: list[str] | None = None,
    boxes: list[str] | None = None,
    structures: list[str] | None = None,
    readers_per_image: int = 1,
    blinded: bool = False,
    queue_order: str = "random",
) -> Task:
    """Make a task (admins and researchers). readers: {user name: adjudicator}. The schema defaults to every
    finding, boxes for every finding, and every structure."""
    if actor.role not in (Role.admin.value, Role.researcher.value):
        raise TaskError("only an admin or a researcher makes labelling tasks")
    name = name.strip()
    if not name:
        raise TaskError("a task needs a name")
    if queue_order not in ORDERS:
        raise TaskError(f"unknown order {queue_order!r} (one of {', '.join(ORDERS)})")
    findings = list(vocabulary.FINDINGS) if findings is None else findings
    boxes = list(vocabulary.FINDINGS) if boxes is None else boxes
    structures = list(STRUCTURES) if structures is None else structures
    for f in [*findings, *boxes]:
        if f not in vocabulary.FINDINGS:
            raise TaskError(f"unknown finding {f!r} (known: {', '.join(vocabulary.FINDINGS)})")
    if unknown := set(structures) - set(STRUCTURES):
        raise TaskError(f"unknown structure {sorted(unknown)[0]!r} (known: {', '.join(STRUCTURES)})")
    if not image_ids:
        raise TaskError("a task needs at least one image")
    if not readers:
        raise TaskError("a task needs at least one reader")
    if not 1 <= readers_per_image <= len(readers):
        raise TaskError(f"{readers_per_image} readers per image, but the task has {len(readers)} reader(s)")

    def tx(s: Session) -> Task:
        if repo.task_by_name(s, name) is not None:
            raise TaskError(f"a task named {name!r} exists already")
        ids = {}
        for reader, adjudicator in readers.items():
            user = accounts.get_user_by_name(s, reader)
            if user is None or not user.is_active:
                raise TaskError(f"no active user named {reader!r}")
            if user.role == Role.researcher:
                raise TaskError(f"{reader} is a researcher: researchers do not label")
            ids[user.id] = adjudicator
        images = list(s.scalars(select(Image).where(Image.id.in_(image_ids))))
        if missing := set(image_ids) - {i.id for i in images}:
            raise TaskError(f"image {min(missing)} is not stored")
        priorities = _priorities(ctx, s, name, queue_order, images)
        schema = json.dumps({"findings": findings, "boxes": boxes, "structures": structures})
        row = repo.add_task(
            s, name=name, schema=schema, readers_per_image=readers_per_image, blinded=blinded,
            queue_order=queue_order, created_by_id=actor.user_id, images=priorities, readers=ids,
        )  # fmt: skip
        audit.add(s, "task_created", actor_id=actor.user_id, target=name,
                  details={"images": len(images), "readers": len(ids), "order": queue_order})  # fmt: skip
        return _task(s, row)

    return dbe.write(ctx.engine, tx)


def _priorities(ctx: Context, s: Session, name: str, order: str, images: list[Image]) -> dict[int, float]:
    """{image id: place in the queue} (lower first). Images without the needed AI results or verdicts come after
    the others, in the task's random order."""

    def rand(image: Image) -> float:  # reproducible per task and image
        return int(hashlib.sha256(f"{name}/{image.id}".encode()).hexdigest()[:12], 16) / 16**12

    if order == "random":
        return {i.id: rand(i) for i in images}
    if order == "rejected_first":
        rejected = repo.rejections_per_image(s, [i.id for i in images])
        return {i.id: -rejected[i.id] + rand(i) / 2 if i.id in rejected else 1 + rand(i) for i in images}
    out = {}
    for image in images:
        preds = repo.predictions_of(s, image.pixel_sha256, "classification")
        results = [json.loads(p.result) for p in preds]
        scores = [r["probabilities"] for r in results]
        kinds = [r.get("score_kind") for r in results]
        key = None
        if order == "uncertainty" and preds:
            # the smallest distance of the newest result to its operating points, in log-odds (many sit far below 0.5)
            newest = json.loads(preds[-1].result)
            last = preds[-1]
            thr = threshold_sets.in_force_of(
                s, last.model_id, last.model_version, last.weights_sha256, newest.get("default_thresholds", {})
            ).thresholds
            key = min(
                abs(_logit(p) - _logit(thr.get(label, 0.5))) for label, p in newest["probabilities"].items()
            )
        elif order == "model_disagreement" and len(scores) >= 2:
            # only scores of one kind subtract (a softmax share and a calibrated probability do not)
            gaps = [abs(a[k] - b[k]) for (a, ka), (b, kb) in itertools.combinations(zip(scores, kinds, strict=True), 2)
                    if ka == kb for k in a.keys() & b.keys()]  # fmt: skip
            key = -max(gaps) if gaps else None
        out[image.id] = key if key is not None else 1e9 + rand(image)
    return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


# --- the queue -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    images: int
    done: int  # images with the readers they need (or a final)
    finals: int
    per_reader: dict[str, int]  # submitted readings


def _submitted(s: Session, task_id: int, image_ids: list[int] | None = None) -> tuple[dict[int, set[int]], set[int], dict[tuple[int, int], str], dict[int, set[int]]]:
    """({image: readers who submitted}, images with a final, {(image, reader): status of the newest version},
    {image: readers with a draft saved in the last CLAIM, who hold the image while they read it})."""
    by_image: dict[int, set[int]] = {}
    finals: set[int] = set()
    newest: dict[tuple[int, int], str] = {}
    claims: dict[int, set[int]] = {}
    since = utcnow() - CLAIM
    for v in repo.heads(s, task_id, image_ids):
        if v.status == AnnotationStatus.final:
            finals.add(v.image_id)
            continue
        newest[(v.image_id, v.reader_id)] = v.status.value
        if v.status == AnnotationStatus.submitted:
            by_image.setdefault(v.image_id, set()).add(v.reader_id)
        elif v.created_at >= since:
            claims.setdefault(v.image_id, set()).add(v.reader_id)
    return by_image, finals, newest, claims


def next_image(ctx: Context, task_id: int, reader_id: int) -> int | None:
    """The reader's next image: an open draft of theirs first (while the image still needs them), else the first
    image in queue order that they have not submitted, that has no final, and that still needs readers, counting
    those reading it now (a draft in the last CLAIM) so that two readers of a single-pass task are not given the
    same image. None when nothing is left."""
    with dbe.read(ctx.engine) as s:
        task = s.get(LabellingTask, task_id)
        by_image, finals, newest, claims = _submitted(s, task_id)
        order = repo.task_images(s, task_id)

        def open_(i: int) -> bool:
            return i not in finals and len(by_image.get(i, ())) < task.readers_per_image

        drafts = [i for i in order if newest.get((i, reader_id)) == "draft" and open_(i)]
        if drafts:
            return drafts[0]
        for image_id in order:
            taken = by_image.get(image_id, set()) | (claims.get(image_id, set()) - {reader_id})
            if image_id not in finals and reader_id not in by_image.get(image_id, ()) and len(taken) < task.readers_per_image:
                return image_id
        return None


def progress(ctx: Context, task_id: int) -> Progress:
    with dbe.read(ctx.engine) as s:
        task = s.get(LabellingTask, task_id)
        by_image, finals, _, _ = _submitted(s, task_id)
        images = repo.task_images(s, task_id)
        names = {uid: name for name, (uid, _) in repo.task_readers(s, task_id).items()}
        per_reader = dict.fromkeys(names.values(), 0)
        for readers in by_image.values():
            for r in readers:
                if r in names:
                    per_reader[names[r]] += 1
        done = sum(1 for i in images if i in finals or len(by_image.get(i, ())) >= task.readers_per_image)
        return Progress(len(images), done, len(finals & set(images)), per_reader)


def closed(ctx: Context, task_id: int, image_id: int) -> bool:
    """An image is closed once it has a final or the readers it needs: then a blinded reader may see the others."""
    with dbe.read(ctx.engine) as s:
        task = s.get(LabellingTask, task_id)
        by_image, finals, _, _ = _submitted(s, task_id, [image_id])
        return image_id in finals or len(by_image.get(image_id, ())) >= task.readers_per_image


def visible_lines(ctx: Context, task_id: int, image_id: int, viewer) -> list:
    """The newest version of each line of the image that `viewer` may see: in a blinded task, a reader sees only
    their own work until the image is closed; adjudicators, admins and researchers see everyone's."""
    lines = annotations.heads(ctx, task_id, [image_id])
    with dbe.read(ctx.engine) as s:
        task = by_id(s, task_id)
    if viewer.role in ("admin", "researcher") or task.readers.get(viewer.username) or not task.blinded:
        return lines
    if closed(ctx, task_id, image_id):
        return lines
    return [v for v in lines if v.reader == viewer.username and v.status != "final"]
