"""Agreement between the readers of a task (or of annotations made without a task): per finding Cohen's or
Fleiss' kappa with a 95% interval and percent agreement, boxes matched by IoU >= 0.5 with an F1 per pair of
readers, masks compared per structure by Dice and HD95, and the images the readers disagree on most. Each
reader's newest submitted version counts; an image counts for a finding when every reader labelled it."""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np

from db import annotations as repo
from db import engine as dbe
from db.models import Image
from inference import agreement
from services import annotations, vocabulary
from services.context import Context


class AgreementError(ValueError):
    pass


def submitted_by_reader(ctx: Context, task_id: int | None) -> dict[str, dict[int, annotations.Version]]:
    """{reader: {image id: newest version}} of versions whose newest state is submitted."""
    out: dict[str, dict[int, annotations.Version]] = defaultdict(dict)
    for v in annotations.heads(ctx, task_id):
        if v.status == "submitted":
            out[v.reader][v.image_id] = v
    return out


def report(ctx: Context, task_id: int | None, readers: list[str] | None = None, worst: int = 10) -> dict:
    work = submitted_by_reader(ctx, task_id)
    readers = sorted(work) if not readers else readers
    if missing := [r for r in readers if r not in work]:
        raise AgreementError(
            f"{missing[0]} has no submitted annotations here (readers with some: {', '.join(sorted(work)) or 'none'})"
        )
    if len(readers) < 2:
        raise AgreementError(
            f"agreement needs two or more readers with submitted annotations; found {len(readers)}"
        )
    common = sorted(set.intersection(*(set(work[r]) for r in readers)))
    per_image_disagreement: dict[int, list[str]] = defaultdict(list)

    findings = {}
    for label in [*vocabulary.FINDINGS, vocabulary.NO_FINDING]:
        rows = [(i, [work[r][i].labels.get(label) for r in readers]) for i in common]
        rows = [(i, values) for i, values in rows if None not in values]
        if not rows:
            continue
        k = agreement.kappa(np.array([values for _, values in rows]))
        findings[label] = {
            "kappa": k.kappa, "ci95": list(k.ci95) if k.ci95 else None,
            "percent_agreement": k.percent_agreement, "n_images": k.n_images,
        }  # fmt: skip
        for i, values in rows:
            if len(set(values)) > 1:
                per_image_disagreement[i].append(label)

    boxes = {}
    for a, b in itertools.combinations(readers, 2):
        matched = n_a = n_b = 0
        for i in common:
            m, x, y = agreement.box_f1(work[a][i].boxes, work[b][i].boxes)
            matched, n_a, n_b = matched + m, n_a + x, n_b + y
            if m < max(x, y):
                per_image_disagreement[i].append(f"boxes {a}/{b}")
        boxes[f"{a}|{b}"] = {
            "f1": 2 * matched / (n_a + n_b) if n_a + n_b else None, "matched": matched,
            f"boxes_{a}": n_a, f"boxes_{b}": n_b, "n_images": len(common),
        }  # fmt: skip

    masks = _masks(ctx, work, readers, common, per_image_disagreement)
    with dbe.read(ctx.engine) as s:
        names = {
            i.id: i.original_filename
            for i in s.query(Image).filter(Image.id.in_(list(per_image_disagreement)))
        }
    ranked = sorted(per_image_disagreement.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:worst]
    return {
        "method": "cohen" if len(readers) == 2 else "fleiss",
        "readers": readers,
        "n_images": len(common),
        "findings": findings,
        "boxes": {"iou_threshold": agreement.IOU_MATCH, "pairs": boxes},
        "masks": masks,
        "most_disagreement": [{"image_id": i, "file": names.get(i), "disagree_on": d} for i, d in ranked],
    }


def _masks(ctx, work, readers, common, disagreement) -> dict:
    """Dice and HD95 per structure and pair of readers, over the images where both drew a label map. One image's
    maps are in memory at a time."""
    scores: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for i in common:
        maps = {r: annotations.load_label_map(ctx, work[r][i].label_map_sha256) for r in readers
                if work[r][i].label_map_sha256}  # fmt: skip
        for a, b in itertools.combinations(readers, 2):
            if a not in maps or b not in maps:
                continue
            for value, structure in vocabulary.STRUCTURES.items():
                ma, mb = maps[a] == value, maps[b] == value
                d, h = agreement.dice(ma, mb), agreement.hd95(ma, mb)
                dices, hds = scores.setdefault((structure, f"{a}|{b}"), ([], []))
                if d is not None:
                    dices.append(d)
                    if d < 0.9:
                        disagreement[i].append(f"{structure} {a}/{b}")
                if h is not None:
                    hds.append(h)
    out: dict[str, dict] = {}
    for (structure, pair), (dices, hds) in scores.items():
        if dices or hds:
            out.setdefault(structure, {})[pair] = {
                "dice_mean": float(np.mean(dices)) if dices else None,
                "hd95_mean_px": float(np.mean(hds)) if hds else None, "n_images": len(dices),
            }  # fmt: skip
    return out


def task_id_of(ctx: Context, name: str | None) -> int | None:
    if name is None:
        return None
    with dbe.read(ctx.engine) as s:
        task = repo.task_by_name(s, name)
        if task is None:
            raise AgreementError(f"no labelling task named {name!r}")
        return task.id
