"""The embedding map of the failure-case explorer: every image of an evaluation set placed on a 2-D map by what a
classification model version sees in it, coloured by error type for one finding at an operating point, with the
metrics of a selected group (a lasso, a box, or a cluster of the map) beside those of the whole set.

Features are the classifier's penultimate layer (inference.embeddings "penultimate": the 1280 values feeding its
last linear layer), what the model decides from; they go through the embedding cache of `cxr-review similar`
(services.similar, by model id, version, weights sha256, layer and pixel sha256), so an image embedded once is
never embedded again. The 2-D coordinates (UMAP or t-SNE) are cached on disk too, keyed by the set's content
sha256 and folder, the model (id, version, weights sha256), the layer, the method and the seed: a second visit
computes neither features nor a map. The cache holds each point's position in the set and pixel sha256, not
item ids, so a set made again under another name (same content) reuses the map with its own items. Scores come
from the set's evaluation runs (services.eval_runs.scores)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from sqlalchemy import select

from db import engine as dbe
from db.models import Image
from inference import curves, embeddings, metrics
from inference.runner import Runner
from inference.types import RESEARCH_USE, ModelRef, ModelSpec
from services import eval_runs, eval_sets, similar
from services.context import Context
from services.store import private_dir, write_atomic

LAYER = "penultimate"
METHODS = embeddings.MAP_METHODS
CHUNK = 64  # items embedded between two progress reports
ERROR_TYPES = ("TP", "FP", "FN", "TN", "unlabelled", "no result")
MAX_CLUSTERS = 20


@dataclass
class MapData:
    """Where each embedded item of a set lies on the map (row i of `xy` is item_ids[i]), and what made it."""

    set_id: int
    model: ModelRef
    layer: str
    method: str
    seed: int
    item_ids: list[int]
    xy: np.ndarray  # (N, 2) float32
    missing: list[dict] = field(default_factory=list)  # {"item", "reason"} of items that could not be read
    computed: int = 0  # features the model computed in this call
    map_cached: bool = False  # the coordinates came from the cache


def cache_key(content_sha256: str, folder: str | None, model: ModelRef, layer: str, method: str,
              seed: int) -> str:  # fmt: skip
    # the folder is not in the content hash but decides which files are read (and so which are missing)
    parts = [content_sha256, folder, model.model_id, model.version, model.weights_sha256, layer, method, seed]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class MapCache:
    """2-D coordinates on disk, one .npz per cache_key (files 0600 in 0700 folders: derived from patient
    images). Rows are stored by the item's position in the set and its pixel sha256, never by item id: sets
    of equal content share an entry, and `get` maps it back onto the asking set's items. A damaged entry, or
    one whose pixels do not match the set's, is recomputed, not trusted."""

    def __init__(self, root: Path):
        self.dir = Path(root)

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def get(self, key: str, items: list[eval_sets.Item]) -> tuple[list[int], np.ndarray, list[dict]] | None:
        """(item ids of `items`, xy, missing) or None."""
        try:
            with np.load(self._path(key), allow_pickle=False) as z:
                pos, pixels, xy = z["positions"], z["pixels"], z["xy"]
                missing = json.loads(str(z["missing"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError):
            return None
        if xy.shape != (len(pos), 2) or len(pixels) != len(pos) or not np.isfinite(xy).all():
            return None
        if any(not 0 <= p < len(items) or items[p].pixel_sha256 != str(h)
               for p, h in zip(pos, pixels, strict=True)):  # fmt: skip
            return None  # not this set's content (or a damaged entry)
        return [items[int(p)].id for p in pos], xy.astype(np.float32), missing

    def put(self, key: str, items: list[eval_sets.Item], item_ids: list[int], xy: np.ndarray,
            missing: list[dict]) -> None:  # fmt: skip
        position = {it.id: i for i, it in enumerate(items)}
        pos = [position[i] for i in item_ids]
        private_dir(self.dir)
        buf = io.BytesIO()
        np.savez(buf, positions=np.asarray(pos, np.int64),
                 pixels=np.asarray([items[p].pixel_sha256 for p in pos]),
                 xy=np.asarray(xy, np.float32), missing=np.asarray(json.dumps(missing)))  # fmt: skip
        write_atomic(self._path(key), buf.getvalue())


def cache_roots(ctx: Context) -> tuple[Path, Path]:
    """(embedding cache, map cache): the first is the one `cxr-review similar` uses."""
    return ctx.settings.data_dir / "embeddings", ctx.settings.data_dir / "embedding_maps"


def _sources(ctx: Context, info: eval_sets.SetInfo, items: list[eval_sets.Item]) -> tuple[dict, list[dict]]:
    """({item id: similar.Source}, missing): where each item's file is read from, as eval_runs.load_item reads
    it (a folder set's file only under the dataset folders, a stored image from the image store)."""
    out, missing = {}, []
    if info.kind == "database":
        ids = [it.image_id for it in items if it.image_id is not None]
        with dbe.read(ctx.engine) as s:
            keys = dict(s.execute(select(Image.id, Image.file_sha256).where(Image.id.in_(ids))).all()) if ids else {}
        for it in items:
            if (key := keys.get(it.image_id)) is None:
                missing.append({"item": eval_runs.item_name(it), "reason": "image no longer in the store"})
            else:
                out[it.id] = similar.Source(ctx.store.path_for(key), {"item": it.id}, it.pixel_sha256)
        return out, missing
    for it in items:
        path = Path(info.folder or "") / (it.file_name or "")
        if not it.file_name or not eval_sets.under_roots(path, ctx.settings.dataset_roots):
            missing.append({"item": eval_runs.item_name(it),
                            "reason": "the file does not lie under a dataset folder (any more)"})  # fmt: skip
        else:
            out[it.id] = similar.Source(path, {"item": it.id}, it.pixel_sha256)
    return out, missing


def features(
    ctx: Context, runner: Runner, info: eval_sets.SetInfo, items: list[eval_sets.Item], spec: ModelSpec,
    layer: str = LAYER, progress: Callable[[int, int], None] | None = None,
) -> tuple[list[int], np.ndarray, list[dict], int]:  # fmt: skip
    """(item ids, unit-length features (N, D), missing, computed) of the items the model could read, from the
    embedding cache where it has them. `progress(done, total)` is called after each CHUNK of items."""
    sources, missing = _sources(ctx, info, items)
    roots = cache_roots(ctx)
    by_id = {it.id: it for it in items}
    ids, rows, computed = [], [], 0
    todo = list(sources.items())
    for start in range(0, len(todo), CHUNK):
        part = todo[start : start + CHUNK]
        made, _ = similar.embed_files(runner, [src for _, src in part], roots[0], model=spec, layer=layer,
                                      max_bytes=ctx.settings.max_upload_bytes)  # fmt: skip
        computed += made.computed
        row_of = {f: i for i, f in enumerate(made.files)}
        for item_id, src in part:
            item = by_id[item_id]
            if (row := row_of.get(str(src.path))) is None:
                code, reason = made.rejected.get(str(src.path), ("", "not read"))
                missing.append({"item": eval_runs.item_name(item), "reason": reason})
            elif made.pixel_sha256[row] != item.pixel_sha256:
                missing.append({"item": eval_runs.item_name(item),
                                "reason": "the file's pixels changed since the set was made"})  # fmt: skip
            else:
                ids.append(item_id)
                rows.append(made.vectors[row])
        if progress is not None:
            progress(min(start + CHUNK, len(todo)), len(todo))
    vectors = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return ids, vectors, missing, computed


def build_map(
    ctx: Context, runner: Runner, set_id: int, ref: str, method: str = "umap", seed: int = 0,
    layer: str = LAYER, progress: Callable[[str, float], None] | None = None, refresh: bool = False,
) -> MapData:  # fmt: skip
    """The set's map by one model version: from the map cache when this set content, model, layer, method and
    seed were mapped before (no feature is read then), else features (cached ones reused) and a new map, which
    is cached. `refresh`: map again (after images that could not be read are back; cached features are still
    reused). `progress(text, fraction)` tells what is being done. ModelUnavailable when the weights are
    missing or changed; ValueError for an unknown method or a model that is not a classifier."""
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}: one of {', '.join(METHODS)}")
    spec = runner.registry.check(runner.registry.resolve(ref))
    if spec.task != "classification":
        raise ValueError(f"the map needs a classification model, and {spec.ref} is a {spec.task} model")
    model = ModelRef(spec.model_id, spec.version, spec.weights_sha256)
    info = eval_sets.get(ctx, set_id)
    key = cache_key(info.content_sha256, info.folder, model, layer, method, seed)
    cache = MapCache(cache_roots(ctx)[1])
    items = eval_sets.items(ctx, set_id)
    if not refresh and (hit := cache.get(key, items)) is not None:
        ids, xy, missing = hit
        return MapData(set_id, model, layer, method, seed, ids, xy, missing, 0, True)

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress(f"Features of {done} of {total} images ({spec.ref}, {layer} layer)", 0.8 * done / max(total, 1))

    ids, vectors, missing, computed = features(ctx, runner, info, items, spec, layer, step)
    if progress is not None:
        progress(f"{METHODS[method]} map of {len(ids)} images", 0.85)
    xy = embeddings.embedding_map(vectors, seed=seed, method=method) if len(ids) else np.zeros((0, 2), np.float32)
    cache.put(key, items, ids, xy, missing)
    return MapData(set_id, model, layer, method, seed, ids, xy, missing, computed, False)


# --- error types and group metrics ------------------------------------------------------------------------------
def error_types(labels: list[bool | None], scores: np.ndarray, has: np.ndarray, threshold: float) -> list[str]:
    """Per item, for one finding at the operating point (score >= threshold is called positive, as
    inference.curves.confusion calls it): TP, FP, FN, TN; "unlabelled" without a label, "no result" without a
    stored score."""
    out = []
    for label, score, ok in zip(labels, scores, has, strict=True):
        if label is None:
            out.append("unlabelled")
        elif not ok:
            out.append("no result")
        else:
            called = score >= threshold
            out.append(("TP" if called else "FN") if label else ("FP" if called else "TN"))
    return out


def group_metrics(y: np.ndarray, s: np.ndarray, threshold: float, n_items: int | None = None) -> dict:
    """A group's figures from its labelled, scored images (y bools, s scores): n (images in the group, labelled
    or not: `n_items`), labelled, positives, AUC (None with `auc_note` saying why where a class is missing),
    and sensitivity, specificity, PPV and NPV at the threshold (None where the denominator is 0)."""
    y, s = np.asarray(y, dtype=bool), np.asarray(s, dtype=float)
    reason = curves.undefined_reason(y)
    op = curves.confusion(y, s, threshold) if y.size else {}
    return {
        "n": int(y.size if n_items is None else n_items), "labelled": int(y.size), "positives": int(y.sum()),
        "auc": None if reason else metrics.roc_auc(y, s), "auc_note": reason,
        **{k: op.get(k) for k in ("tp", "fp", "fn", "tn", "sensitivity", "specificity", "ppv", "npv")},
    }  # fmt: skip


@dataclass
class Coloured:
    """A map joined with one version's scores for one finding: per mapped item its label, score and error type."""

    data: MapData
    finding: str
    threshold: float
    items: list[eval_sets.Item]  # in the map's order
    labels: list[bool | None]
    scores: np.ndarray  # NaN where no result
    has: np.ndarray
    types: list[str]

    def metrics(self, selected: list[int] | None = None) -> dict:
        """group_metrics of the selected item ids (all mapped items when None)."""
        keep = set(selected) if selected is not None else None
        rows = [i for i, it in enumerate(self.items) if keep is None or it.id in keep]
        scored = [i for i in rows if self.labels[i] is not None and self.has[i]]
        y = np.array([bool(self.labels[i]) for i in scored], dtype=bool)
        return group_metrics(y, self.scores[scored], self.threshold, n_items=len(rows))


def colour(ctx: Context, registry, data: MapData, finding: str, threshold: float,
           item_ids: list[int] | None = None) -> Coloured:  # fmt: skip
    """The map's items (only `item_ids` where given, e.g. a subgroup) with their labels, the version's stored
    scores for `finding` and their error types at `threshold`."""
    spec = registry.resolve(f"{data.model.model_id}@{data.model.version}")
    if finding not in spec.labels:
        raise ValueError(f"{spec.ref} does not score {finding}")
    by_id = {it.id: it for it in eval_sets.items(ctx, data.set_id)}
    wanted = set(item_ids) if item_ids is not None else None
    rows = [i for i, item_id in enumerate(data.item_ids) if item_id in by_id and (wanted is None or item_id in wanted)]
    items = [by_id[data.item_ids[i]] for i in rows]
    raw, has = eval_runs.scores(ctx, spec, items)
    scores = raw[:, spec.labels.index(finding)] if len(items) else np.zeros(0)
    labels = [it.labels.get(finding) for it in items]
    sub = MapData(data.set_id, data.model, data.layer, data.method, data.seed, [it.id for it in items],
                  data.xy[rows] if rows else np.zeros((0, 2), np.float32), data.missing, data.computed,
                  data.map_cached)  # fmt: skip
    return Coloured(sub, finding, threshold, items, labels, scores, has,
                    error_types(labels, scores, has, threshold))  # fmt: skip


def clusters(xy: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A cluster number (0..k-1) per point of the map: k-means on the 2-D coordinates, k chosen by the user
    (clipped to the number of points)."""
    from sklearn.cluster import KMeans

    xy = np.asarray(xy, dtype=np.float64)
    k = max(1, min(int(k), len(xy), MAX_CLUSTERS))
    if len(xy) == 0:
        return np.zeros(0, np.int64)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(xy).astype(np.int64)


def metric_rows(whole: dict, selection: dict | None) -> list[dict]:
    """The table beside the map: the selection (when there is one) and the whole set, AUC or why not."""
    def row(name: str, m: dict) -> dict:
        return {"group": name, "images": m["n"], "labelled": m["labelled"], "positives": m["positives"],
                "AUC": f"{m['auc']:.3f}" if m["auc"] is not None else f"not defined: {m['auc_note']}",
                **{k.upper() if len(k) == 3 else k: m[k] for k in ("sensitivity", "specificity", "ppv", "npv")}}  # fmt: skip

    return ([row("selection", selection)] if selection is not None else []) + [row("whole set", whole)]


# --- the figure -------------------------------------------------------------------------------------------------
COLOURS = {"TP": "#2ca02c", "FP": "#ff7f0e", "FN": "#d62728", "TN": "#1f77b4", "unlabelled": "#c7c7c7",
           "no result": "#7f7f7f"}  # fmt: skip


def figure(col: Coloured, cluster_of: np.ndarray | None = None, highlight: list[int] | None = None) -> go.Figure:
    """The map as a plotly scatter, one trace per error type (legend with counts); each point's customdata is its
    item id and its hover the file name, the item's positive labels, the score and the error type. With
    `cluster_of`, each cluster's number is written at its centre; with `highlight` (item ids), those points stand
    out and the others are dimmed, as plotly shows a selection. Box selection is the drag mode; the toolbar
    switches to lasso."""

    fig = go.Figure()
    types = np.array(col.types)
    lit = set(highlight or ())
    for t in ERROR_TYPES:
        rows = np.flatnonzero(types == t)
        if rows.size == 0:
            continue
        hover = []
        for i in rows:
            it = col.items[i]
            positives = [f for f, v in it.labels.items() if v] or ["none"]
            score = "no result" if not col.has[i] else f"{col.scores[i]:.4g}"
            hover.append(f"{eval_runs.item_name(it)}<br>labels: {', '.join(positives)}<br>{col.finding} score {score} · {t}")
        fig.add_trace(go.Scatter(
            x=col.data.xy[rows, 0], y=col.data.xy[rows, 1], mode="markers", name=f"{t} ({rows.size})",
            marker={"color": COLOURS[t], "size": 7, "line": {"width": 0.5, "color": "white"}},
            customdata=[[col.items[i].id] for i in rows], hovertext=hover, hoverinfo="text",
            selectedpoints=None if highlight is None else [k for k, i in enumerate(rows) if col.items[i].id in lit],
        ))  # fmt: skip
    if cluster_of is not None and len(cluster_of):
        centres = [(c, col.data.xy[cluster_of == c].mean(axis=0)) for c in np.unique(cluster_of)]
        fig.add_trace(go.Scatter(x=[p[0] for _, p in centres], y=[p[1] for _, p in centres], mode="text",
                                 text=[f"<b>C{c + 1}</b>" for c, _ in centres], textfont={"size": 15},
                                 name="clusters", hoverinfo="skip"))  # fmt: skip
    m = col.data.model
    fig.update_layout(
        title={"text": f"{METHODS[col.data.method]} map · {col.finding} at threshold {col.threshold:.4g}<br><sup>"
                       f"{m.model_id}@{m.version} · weights sha256 {m.weights_sha256[:12]}… · {col.data.layer} "
                       f"layer</sup><br><sup>{RESEARCH_USE}</sup>", "font": {"size": 13}},
        dragmode="select", height=560, margin={"t": 90, "l": 20, "r": 20, "b": 20},
        xaxis={"showticklabels": False, "title": None}, yaxis={"showticklabels": False, "title": None},
        legend={"orientation": "h", "y": -0.02}, clickmode="event+select",
    )  # fmt: skip
    return fig
