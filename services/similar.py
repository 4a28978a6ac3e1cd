"""`cxr-review similar`: the stored or given images that look most like each query image.

Files are read exactly as import and infer read them (services.importer.load_checked: same checks, same
rejections) and embedded by inference.embeddings on the picture the models see. Embeddings are cached on disk
under the data folder, one file per (model id, version, weights sha256, layer, pixel sha256), so a second search
over the same images runs no model. Search is exact (numpy brute force): bench/bench_similar.py measures it
against an approximate index (faiss HNSW) at 10,000 embeddings.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from db import engine as dbe
from db import repo
from inference import embeddings
from inference.runner import Runner
from inference.types import RESEARCH_USE, ModelRef
from services import analysis, importer
from services.store import ImageStore, private_dir, write_atomic
from viewer import dicom_io

BATCH = 32  # images per forward pass: the model inputs of one batch are all that is held in memory


class EmbeddingCache:
    """Unit-length embeddings on disk, keyed by the model (id, version, weights sha256), the layer and the
    image's pixel sha256. Files 0600 in 0700 folders: they are derived from patient images."""

    def __init__(self, root: Path, model: ModelRef, layer: str):
        self.dir = Path(root) / model.model_id / model.version / model.weights_sha256 / layer

    def _path(self, pixel_sha256: str) -> Path:
        return self.dir / pixel_sha256[:2] / f"{pixel_sha256[2:]}.npy"

    def get(self, pixel_sha256: str) -> np.ndarray | None:
        path = self._path(pixel_sha256)
        try:
            v = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a damaged entry is recomputed, not trusted
            return None
        return v if v.ndim == 1 and v.dtype == np.float32 and np.isfinite(v).all() else None

    def put(self, pixel_sha256: str, vector: np.ndarray) -> None:
        path = self._path(pixel_sha256)
        private_dir(path.parent)
        buf = io.BytesIO()
        np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        write_atomic(path, buf.getvalue())


@dataclass(frozen=True)
class Source:
    """An image to search: where to read it, how output lines name it (`fields`: {"file": ...}, and
    {"image_id": ...} for a stored image), and its pixel sha256 when known (a stored image): then a cached
    embedding is used without reading the file."""

    path: Path
    fields: dict
    pixel_sha256: str | None = None


@dataclass
class Embedded:
    """Images that were read and embedded, row i of `vectors` for files[i]; and the files refused."""

    files: list[str] = field(default_factory=list)
    pixel_sha256: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)  # file -> (code, reason)
    computed: int = 0  # pictures the model embedded in this run
    cached: int = 0  # files whose embedding was not computed for them (the cache, or the same pixels before)


def embed_files(
    runner: Runner,
    files: Iterable[Path | Source],
    cache_root: Path,
    *,
    max_bytes: int,
    model: str = embeddings.DEFAULT_MODEL,
    layer: str = embeddings.DEFAULT_LAYER,
) -> tuple[Embedded, ModelRef]:
    """Read, check and embed each file (a cached embedding when its pixels were embedded before by the same
    model and layer); `Embedded.files` names them by path. ModelUnavailable when the model's weights are
    missing or changed."""
    spec = runner.registry.check(model)
    ref = ModelRef(spec.model_id, spec.version, spec.weights_sha256)
    cache = EmbeddingCache(cache_root, ref, layer)
    out = Embedded()
    vectors: list[np.ndarray | None] = []
    pending: dict[str, list] = {}  # pixel sha256 -> [model input, rows waiting for it]

    def flush() -> None:
        if not pending:
            return
        made = embeddings.embed_batch(runner, [x for x, _ in pending.values()], spec, layer)
        for (sha, (_, rows)), v in zip(pending.items(), made.vectors, strict=True):
            cache.put(sha, v)
            for row in rows:
                vectors[row] = v
        out.computed += len(pending)
        pending.clear()

    for src in files:
        path = src.path if isinstance(src, Source) else src
        known = src.pixel_sha256 if isinstance(src, Source) else None
        if known and (v := cache.get(known)) is not None:  # a stored image seen before: not even read
            out.files.append(str(path))
            out.pixel_sha256.append(known)
            vectors.append(v)
            out.cached += 1
            continue
        try:
            img = importer.load_checked(path, max_bytes=max_bytes)
        except importer.FileRejected as exc:
            out.rejected[str(path)] = (exc.code, exc.reason)
            continue
        sha = dicom_io.pixel_sha256(img)
        out.files.append(str(path))
        out.pixel_sha256.append(sha)
        row = len(vectors)
        vectors.append(None)
        if sha in pending:  # the same pixels twice in one batch: computed once
            pending[sha][1].append(row)
            out.cached += 1
        elif (v := cache.get(sha)) is not None:
            vectors[row] = v
            out.cached += 1
        else:
            pending[sha] = [analysis.model_input(img), [row]]
            if len(pending) >= BATCH:
                flush()
    flush()
    out.vectors = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
    return out, ref


def nearest_others(
    gallery_vectors: np.ndarray,
    gallery_sha256: Sequence[str],
    queries: np.ndarray,
    query_sha256: Sequence[str],
    k: int,
) -> list[list[tuple[int, float]]]:
    """Per query row, the k nearest gallery rows as (row, distance), nearest first, leaving out every row with
    the query's own pixels: the query file itself, and any copy of it under another name."""
    if len(gallery_sha256) == 0 or len(query_sha256) == 0:
        return [[] for _ in query_sha256]
    counts = Counter(gallery_sha256)
    extra = max((counts[s] for s in query_sha256), default=0)
    idx, dist = embeddings.ExactIndex(gallery_vectors).search(queries, k + extra)
    return [
        [(int(i), float(d)) for i, d in zip(row_i, row_d, strict=True) if gallery_sha256[i] != sha][:k]
        for row_i, row_d, sha in zip(idx, dist, query_sha256, strict=True)
    ]


def _key(f: Path) -> str:
    """One name per file however it was given (relative, absolute, through a link)."""
    return str(f.resolve() if f.exists() else f)


def folder_sources(paths: Iterable[str | Path]) -> list[Source]:
    """Files as given, and every file under given folders (recursive, as import walks them)."""
    return [Source(f, {"file": str(f)}) for f in importer.iter_input_files(paths)]


def stored_sources(engine: Engine, store: ImageStore) -> list[Source]:
    """Every image in the database, read from the image store; named by image id and imported file name."""
    with dbe.read(engine) as s:
        rows = repo.stored_images(s)
    return [
        Source(store.path_for(file_sha), {"image_id": image_id, "file": name}, pixel_sha)
        for image_id, file_sha, pixel_sha, name in rows
    ]


def search(
    runner: Runner,
    queries: Iterable[str | Path],
    among: Sequence[Source],
    cache_root: Path,
    *,
    max_bytes: int,
    k: int = 5,
    model: str = embeddings.DEFAULT_MODEL,
    layer: str = embeddings.DEFAULT_LAYER,
) -> Iterator[dict]:
    """One JSON-ready dict per query file (files as given, folders recursively), then one per refused image of
    `among` that is not a query: `status` "done" with `neighbours` [{file, distance}] nearest first, or
    "rejected" with `code` and `reason`. A query's own pixels are never its neighbour, under any name. Each
    file is read and embedded once even when it is both a query and in `among`."""
    query_files = list(importer.iter_input_files(queries))
    todo: dict[str, Path | Source] = {}
    for f in query_files:
        todo.setdefault(_key(f), Path(_key(f)))
    for src in among:
        todo.setdefault(_key(src.path), Source(Path(_key(src.path)), src.fields, src.pixel_sha256))
    embedded, ref = embed_files(
        runner, todo.values(), cache_root, max_bytes=max_bytes, model=model, layer=layer
    )
    row_of = {f: i for i, f in enumerate(embedded.files)}
    gallery: dict[int, dict] = {}  # embedded row -> how output lines name it
    for src in among:
        if (row := row_of.get(_key(src.path))) is not None:
            gallery.setdefault(row, src.fields)
    rows, names = list(gallery), list(gallery.values())
    done = [row_of[_key(f)] for f in query_files if _key(f) in row_of]
    found = nearest_others(
        embedded.vectors[rows],
        [embedded.pixel_sha256[i] for i in rows],
        embedded.vectors[done],
        [embedded.pixel_sha256[i] for i in done],
        k,
    )
    found_of = dict(zip(done, found, strict=True))
    provenance = {"id": ref.model_id, "version": ref.version, "weights_sha256": ref.weights_sha256}
    common = {"model": provenance, "layer": layer, "research_use": RESEARCH_USE}
    reported: set[str] = set()
    for f in query_files:
        key = _key(f)
        reported.add(key)
        if key in embedded.rejected:
            code, reason = embedded.rejected[key]
            yield {"file": str(f), "status": "rejected", "code": code, "reason": reason}
            continue
        yield {
            "file": str(f),
            "status": "done",
            "neighbours": [names[j] | {"distance": round(d, 6)} for j, d in found_of[row_of[key]]],
            **common,
        }
    for src in among:
        key = _key(src.path)
        if key in reported or key not in embedded.rejected:
            continue
        reported.add(key)
        code, reason = embedded.rejected[key]
        yield src.fields | {"status": "rejected", "code": code, "reason": reason, "among": True}
