"""The failure-case explorer (researchers): per finding, where a model version is wrong on an evaluation set at an
operating point. False negatives and false positives ordered by loss (binary cross-entropy of the finding's
score against the label), subgroup filters, likely label errors (confident disagreements with the label), tile
pictures with the Grad-CAM heatmap of the finding, similar cases in the set and in the whole database, and a
group of items sent to annotators as a labelling task (folder items imported into the image store first, once).

Only items with a stored result and a label for the finding count, as on the metrics pages."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select

from db import engine as dbe
from db import repo
from db.models import Image
from inference import embeddings
from inference.runner import Runner
from inference.types import RESEARCH_USE, ModelSpec, ModelUnavailable
from services import analysis, eval_metrics, eval_runs, eval_sets, importer, labelling, similar
from services.context import Context
from services.store import private_dir, write_atomic
from viewer import export, overlays, windowing

log = logging.getLogger(__name__)
EPS = 1e-7  # scores are clipped to [EPS, 1 - EPS] before the log: a score of exactly 0 or 1 has a finite loss
LABEL_ERROR_Q = 0.05  # "confident": beyond this quantile of the other class's scores
GROUPS = ("sex", "age band", "view", "source")
TILE = 256  # thumbnail's longer side in pixels
JPEG_QUALITY = 90
NO_LOCATION = "No Finding"  # has no heatmap: it names the absence of every finding


@dataclass(frozen=True)
class Case:
    """One item of the set with a result and a label for the finding."""

    row: int  # its place in Scored.items
    item: eval_sets.Item
    positive: bool  # the label
    score: float
    loss: float

    @property
    def name(self) -> str:
        return eval_runs.item_name(self.item)


def bce(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-item binary cross-entropy of scores `s` against labels `y`, in nats."""
    p = np.clip(np.asarray(s, dtype=float), EPS, 1 - EPS)
    y = np.asarray(y, dtype=bool)
    return np.where(y, -np.log(p), -np.log1p(-p))


def cases(sc: eval_metrics.Scored, finding: str) -> list[Case]:
    """Every labelled, scored item of the finding, highest loss first (ties by place in the set)."""
    idx, y, s = sc.labelled(finding)
    loss = bce(y, s)
    out = [Case(int(i), sc.items[i], bool(yi), float(si), float(li)) for i, yi, si, li in zip(idx, y, s, loss, strict=True)]
    return sorted(out, key=lambda c: (-c.loss, c.row))


def false_negatives(cs: list[Case], threshold: float) -> list[Case]:
    """Labelled positive, scored under the operating point (positive means at or over it), by loss."""
    return [c for c in cs if c.positive and c.score < threshold]


def false_positives(cs: list[Case], threshold: float) -> list[Case]:
    """Labelled negative, scored at or over the operating point, by loss."""
    return [c for c in cs if not c.positive and c.score >= threshold]


def label_error_rule(q: float = LABEL_ERROR_Q) -> str:
    pct = f"{q * 100:g}"
    return (f"labelled positive with a score at or below the {pct}th percentile of the negatives' scores, or "
            f"labelled negative with a score at or above the {100 - q * 100:g}th percentile of the positives' "
            "scores (whatever the threshold); ranked by loss")  # fmt: skip


def label_errors(cs: list[Case], q: float = LABEL_ERROR_Q) -> tuple[list[Case], str | None]:
    """(likely label errors by loss, None) or ([], why the rule is not defined): confident disagreements, a
    positive scored like the lowest `q` of the negatives or a negative scored like the highest `q` of the
    positives."""
    pos = np.array([c.score for c in cs if c.positive])
    neg = np.array([c.score for c in cs if not c.positive])
    if not pos.size or not neg.size:
        return [], "no positives" if not pos.size else "no negatives"
    low_neg, high_pos = float(np.quantile(neg, q)), float(np.quantile(pos, 1 - q))
    return [c for c in cs if (c.positive and c.score <= low_neg) or (not c.positive and c.score >= high_pos)], None


def group_values(cs: list[Case]) -> dict[str, list[str]]:
    """{sex | age band | view | source: the values the cases carry}, for the filters."""
    return {by: sorted({g for c in cs if (g := eval_metrics.group_of(c.item, by)) is not None}) for by in GROUPS}


def only(cs: list[Case], filters: dict[str, list[str]]) -> list[Case]:
    """The cases whose group is among the chosen values, for each subgroup with a choice (an empty choice: all)."""
    return [c for c in cs if all(not chosen or eval_metrics.group_of(c.item, by) in chosen for by, chosen in filters.items())]


def page_of(cs: list, page: int, size: int) -> list:
    """Page `page` (from 1) of `size` items."""
    return cs[(page - 1) * size : page * size]


def pages(n: int, size: int) -> int:
    return max(1, -(-n // size))


def labels_text(item: eval_sets.Item) -> str:
    """The item's positive labels ("No Finding" where none is), and its unknown ones."""
    positive = [f for f, v in item.labels.items() if v]
    unknown = [f for f, v in item.labels.items() if v is None]
    text = ", ".join(positive) or NO_LOCATION
    return text + (f" (unknown: {', '.join(unknown)})" if unknown else "")


# --- pictures -------------------------------------------------------------------------------------------------
class HeatmapCache:
    """Grad-CAM maps computed here for results stored without one: the PNG in the image store, its key in a file
    per (model id, version, weights sha256, finding, pixel sha256) under the data folder, as the embeddings are."""

    def __init__(self, root: Path, spec: ModelSpec, finding: str):
        self.dir = Path(root) / spec.model_id / spec.version / spec.weights_sha256 / finding

    def _path(self, pixel_sha256: str) -> Path:
        return self.dir / pixel_sha256[:2] / pixel_sha256[2:]

    def get(self, pixel_sha256: str) -> str | None:
        try:
            key = self._path(pixel_sha256).read_text().strip()
        except OSError:
            return None
        return key if len(key) == 64 else None

    def put(self, pixel_sha256: str, key: str) -> None:
        path = self._path(pixel_sha256)
        private_dir(path.parent)
        write_atomic(path, key.encode())


def heatmap_key(ctx: Context, runner: Runner, spec: ModelSpec, info: eval_sets.SetInfo, item: eval_sets.Item,
                finding: str) -> tuple[str | None, str]:  # fmt: skip
    """(store key of the item's Grad-CAM map of the finding, where it came from). From the stored result when it
    has one; else computed now as the viewer computes it (analysis.heatmaps_and_boxes) and stored. None for
    "No Finding" (no location). FileRejected when the item's image must be read and cannot be."""
    if finding == NO_LOCATION:
        return None, "no heatmap: “No Finding” has no location"
    with dbe.read(ctx.engine) as s:
        stored = eval_runs.stored_refs(s, [item.pixel_sha256], spec).get(item.pixel_sha256)
    if stored is not None and (key := json.loads(stored).get("heatmaps", {}).get(finding)):
        return key, "heatmap from the stored result"
    cache = HeatmapCache(ctx.settings.data_dir / "heatmaps", spec, finding)
    if (key := cache.get(item.pixel_sha256)) is not None:
        return key, "heatmap computed for this page"
    x = analysis.model_input(eval_runs.load_item(ctx, info, item))
    cams, _, _ = analysis.heatmaps_and_boxes(runner, x, spec)
    key = ctx.store.put_bytes(export.png_bytes(np.round(cams[finding] * 255).astype(np.uint8)))
    cache.put(item.pixel_sha256, key)
    return key, "heatmap computed for this page"


def tile_jpeg(ctx: Context, info: eval_sets.SetInfo, item: eval_sets.Item, heat_key: str | None,
             size: int = TILE) -> bytes:  # fmt: skip
    """A display-sized JPEG of the item (its default display) with the heatmap laid over it (a thumbnail to find
    cases by, not to read: a fifth of a PNG's bytes); FileRejected (with the reason) when the image cannot be
    read."""
    grey = windowing.render(eval_runs.load_item(ctx, info, item))
    h, w = grey.shape
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    grey = overlays.resize_to(grey, shape)
    rgb = np.dstack([grey] * 3).astype(np.float32)
    if heat_key is not None:
        heat = overlays.resize_to(analysis.stored_png(ctx, heat_key).astype(np.float32) / 255.0, shape)
        layer = overlays.heatmap_layer(heat).astype(np.float32)
        alpha = 0.55 * layer[..., 3:] / 255.0
        rgb = rgb * (1 - alpha) + layer[..., :3] * alpha
    bgr = cv2.cvtColor(np.clip(np.round(rgb), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True)
class Tile:
    """A gallery tile's picture (None where the image cannot be read) and what to say with it."""

    jpeg: bytes | None
    note: str  # where the heatmap came from, or why there is none, or why there is no picture


def tile(ctx: Context, runner: Runner, spec: ModelSpec, info: eval_sets.SetInfo, item: eval_sets.Item,
         finding: str) -> Tile:  # fmt: skip
    """The item's tile: its picture with the finding's heatmap; the image's file gone or changed gives no picture
    and the reason, a model that cannot run gives the picture without a heatmap and the reason."""
    try:
        try:
            key, note = heatmap_key(ctx, runner, spec, info, item, finding)
        except ModelUnavailable as exc:
            key, note = None, f"no heatmap: {exc.reason}"
        return Tile(tile_jpeg(ctx, info, item, key), note)
    except importer.FileRejected as exc:
        return Tile(None, f"{eval_runs.item_name(item)}: {exc.reason}")


# --- similar cases --------------------------------------------------------------------------------------------
def _set_sources(ctx: Context, info: eval_sets.SetInfo, items: list[eval_sets.Item]) -> list[similar.Source]:
    """The set's items as search sources (a folder item only while it lies under a dataset folder; a database
    item while its image is stored)."""
    out = []
    if info.kind == "database":
        with dbe.read(ctx.engine) as s:
            wanted = [i.image_id for i in items if i.image_id is not None]
            files = dict(s.execute(select(Image.id, Image.file_sha256).where(Image.id.in_(wanted))).all())
        for it in items:
            if it.image_id in files:
                out.append(similar.Source(ctx.store.path_for(files[it.image_id]), {"item": it.id}, it.pixel_sha256))
        return out
    for it in items:
        path = Path(info.folder or "") / (it.file_name or "")
        if it.file_name and eval_sets.under_roots(path, ctx.settings.dataset_roots):
            out.append(similar.Source(path, {"item": it.id}, it.pixel_sha256))
    return out


def similar_cases(ctx: Context, runner: Runner, sc: eval_metrics.Scored, info: eval_sets.SetInfo, row: int,
                  finding: str, k: int = 5) -> dict:  # fmt: skip
    """The k nearest neighbours of item `row` in the set and among every stored image (its own pixels never),
    each with its labels (set items; a stored image whose pixels are in the set too) and its score of the
    finding by sc.spec (where stored). Embeddings come from services.similar and its cache; "model" names the
    embedding model, "scored_by" the classifier. ModelUnavailable where the embedding model cannot run."""
    items, j = sc.items, sc.findings.index(finding)
    by_pixel = {it.pixel_sha256: i for i, it in enumerate(items)}
    set_src, db_src = _set_sources(ctx, info, items), similar.stored_sources(ctx.engine, ctx.store)
    query = items[row]
    emb, ref = similar.embed_files(runner, [*set_src, *db_src], ctx.settings.data_dir / "embeddings",
                                   max_bytes=ctx.settings.max_upload_bytes)  # fmt: skip
    at = {f: i for i, f in enumerate(emb.files)}  # a refused file is not there
    out: dict = {"model": {"id": ref.model_id, "version": ref.version, "weights_sha256": ref.weights_sha256},
                 "layer": embeddings.DEFAULT_LAYER, "scored_by": sc.spec.provenance(), "research_use": RESEARCH_USE,
                 "in_set": [], "in_database": [], "query_readable": query.pixel_sha256 in emb.pixel_sha256}  # fmt: skip
    if not out["query_readable"]:
        return out
    qv = emb.vectors[[emb.pixel_sha256.index(query.pixel_sha256)]]
    with dbe.read(ctx.engine) as s:
        db_scores = eval_runs.stored_refs(s, list({sha for sha in emb.pixel_sha256}), sc.spec)
    for key, sources in (("in_set", set_src), ("in_database", db_src)):
        kept = [(at[str(src.path)], src) for src in sources if str(src.path) in at]
        if not kept:
            continue
        rows = [r for r, _ in kept]
        shas = [emb.pixel_sha256[r] for r in rows]
        [found] = similar.nearest_others(emb.vectors[rows], shas, qv, [query.pixel_sha256], k)
        for g, dist in found:
            src, i = kept[g][1], by_pixel.get(shas[g])
            if key == "in_set":
                entry = {"item": eval_runs.item_name(items[i]), "labels": labels_text(items[i]),
                         "score": float(sc.scores[i, j]) if sc.has[i] else None}  # fmt: skip
            else:
                text = db_scores.get(shas[g])
                entry = {"image_id": src.fields["image_id"], "file": src.fields["file"],
                         "labels": labels_text(items[i]) if i is not None else "not in this set",
                         "score": json.loads(text)["probabilities"].get(finding) if text else None}  # fmt: skip
            out[key].append(entry | {"distance": round(dist, 4)})
    return out


# --- a group: to the image store, to annotators, as CSV --------------------------------------------------------
def stored_image_ids(ctx: Context, info: eval_sets.SetInfo, items: list[eval_sets.Item],
                     user_id: int) -> tuple[dict[int, int], list[dict]]:  # fmt: skip
    """({item id: stored image id}, problems [{item, reason}]). A folder item whose pixels are not stored yet is
    imported (as import does it: checks, de-duplication by pixel hash), so doing this twice imports nothing new."""
    ids, problems = {}, []
    for it in items:
        if info.kind == "database":
            if it.image_id is None:
                problems.append({"item": f"set item {it.id}", "reason": "image no longer in the store"})
            else:
                ids[it.id] = it.image_id
            continue
        with dbe.read(ctx.engine) as s:
            known = repo.image_by_pixel_hash(s, it.pixel_sha256)
            known_id = known.id if known is not None else None
        if known_id is not None:
            ids[it.id] = known_id
            continue
        path = Path(info.folder or "") / (it.file_name or "")
        if not it.file_name or not eval_sets.under_roots(path, ctx.settings.dataset_roots):
            problems.append({"item": it.file_name, "reason": "the file does not lie under a dataset folder (any more)"})
            continue
        # a PNG / JPEG carries no header: the study gets the sex, age and view the set's labels CSV gave
        fields = {"patient_sex": it.patient_sex, "patient_age_years": it.patient_age_years,
                  "view_position": it.view_position}  # fmt: skip
        result = importer.import_file(ctx.engine, ctx.store, path, max_bytes=ctx.settings.max_upload_bytes,
                                      display_name=it.file_name, user_id=user_id,
                                      metadata={it.file_name: {k: v for k, v in fields.items() if v is not None}})  # fmt: skip
        if result.status == "rejected":
            problems.append({"item": it.file_name, "reason": result.reason})
            continue
        with dbe.read(ctx.engine) as s:
            image = s.get(Image, result.image_id)
            same = image is not None and image.pixel_sha256 == it.pixel_sha256
        if not same:
            problems.append({"item": it.file_name, "reason": "the file's pixels changed since the set was made"})
            continue
        ids[it.id] = result.image_id
    return ids, problems


@dataclass(frozen=True)
class Sent:
    task: labelling.Task
    problems: list[dict]  # items left out, with the reason


def send(ctx: Context, actor, info: eval_sets.SetInfo, items: list[eval_sets.Item], *, name: str,
         readers: dict[str, bool], findings: list[str]) -> Sent:  # fmt: skip
    """A labelling task of the group's images (imported first where needed); TaskError as labelling.create
    raises it, also where none of the items could be stored. Items that could not be stored are left out and
    listed."""
    if not name.strip():
        raise labelling.TaskError("a task needs a name")
    if not items:
        raise labelling.TaskError("the group is empty")
    ids, problems = stored_image_ids(ctx, info, items, actor.user_id)
    if not ids:
        raise labelling.TaskError(f"none of the {len(items)} image(s) could be stored: {problems[0]['reason']}")
    task = labelling.create(ctx, actor, name=name, image_ids=list(dict.fromkeys(ids.values())), readers=readers,
                            findings=findings, boxes=findings)  # fmt: skip
    return Sent(task, problems)


def group_rows(info: eval_sets.SetInfo, items: list[eval_sets.Item], sc: eval_metrics.Scored | None = None) -> list[dict]:
    """The group as rows: the item, its stored image or file, subgroup fields, its labels (NIH style) and, where
    `sc` is given, its score per finding of that version."""
    row_of = {it.id: i for i, it in enumerate(sc.items)} if sc is not None else {}
    rows = []
    for it in items:
        r = {"item_id": it.id, "file": it.file_name or "", "image_id": it.image_id or "", "pixel_sha256": it.pixel_sha256,
             "Finding Labels": "|".join(f for f, v in it.labels.items() if v) or NO_LOCATION,
             "unknown labels": "|".join(f for f, v in it.labels.items() if v is None), "sex": it.patient_sex or "",
             "age": it.patient_age_years if it.patient_age_years is not None else "", "view": it.view_position or "",
             "source": it.source or ""}  # fmt: skip
        if sc is not None:
            i = row_of.get(it.id)
            for j, f in enumerate(sc.findings):
                r[f"score {f}"] = float(sc.scores[i, j]) if i is not None and sc.has[i] else ""
        rows.append(r)
    return rows


def group_csv(info: eval_sets.SetInfo, items: list[eval_sets.Item], sc: eval_metrics.Scored | None = None) -> bytes:
    """`group_rows` as CSV, after comment lines naming the set (and the model version whose scores it holds)."""
    rows = group_rows(info, items, sc)
    lines = eval_metrics.provenance([sc.spec] if sc is not None else [], info)
    if not rows:
        buf = io.StringIO()
        csv.writer(buf).writerow(["item_id"])
        return buf.getvalue().encode()
    return eval_metrics.csv_bytes(rows, lines)
