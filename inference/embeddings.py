"""Image embeddings from the classifier, for similar-case search and a 2-D map; no database, no Streamlit.

An embedding is an activation of the classifier (MobileNetV3-Small) on the picture the models see, L2-normalised
so that the Euclidean distance between two embeddings is sqrt(2 - 2 cos): 0 for the same picture, at most 2.
Two layers (LAYERS):

- "bneck_grid4" (the default): the last bottleneck block's (96, 7, 7) output averaged over a 4x4 grid of
  overlapping cells, 1536 values. It keeps where things are in the film.
- "penultimate": what the last linear layer decides from: the 1280 values `linear3` -> `bn3` -> hswish of the
  shipped head; for the distilled "pooled_linear" head (one linear layer `fc` on the pooled `conv2`), those
  576 pooled values. Any other network is refused with UnsupportedModel.

Finding the same patient's other frontal film among 356 (shared/data/covid_followup, README "Similar cases"):
the penultimate layer, trained to name one finding, puts it among the first five for 18% of the films; the
grid of the last block for 72%. Works for the shipped 15-class model and for the project's trained multi-label
versions of it (their backbone is `model.base`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F

from inference.runner import Runner, as_image
from inference.types import ModelRef, ModelSpec

DEFAULT_MODEL = "cxr15_mobilenetv3"
# What an embedding is made of, by name: part of the cache key, so two kinds of vectors never mix.
LAYERS = ("bneck_grid4", "penultimate")
DEFAULT_LAYER = "bneck_grid4"


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, each row of unit length
    model: ModelRef
    layer: str
    timings_ms: dict[str, float]


def _hswish(x: torch.Tensor) -> torch.Tensor:
    return x * F.relu6(x + 3) / 6


class UnsupportedModel(ValueError):
    """The network has no `layer` this module knows how to read."""


def _has(net: torch.nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(net, n, None), torch.nn.Module) for n in names)


def check_layer(model: torch.nn.Module, layer: str, name: str = "this network") -> None:
    """UnsupportedModel unless features(model, x, layer) can be computed (ValueError for an unknown layer);
    `name` (the model's id@version) is what the message calls it."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}: one of {LAYERS}")
    net = getattr(model, "base", model)
    if layer == "bneck_grid4":
        ok = _has(net, "conv1", "bneck")
    else:
        ok = _has(net, "conv2", "bneck", "conv1") and (_has(net, "linear3", "bn3") or _has(model, "fc"))
    if not ok:
        kind = type(model).__name__
        raise UnsupportedModel(f"the {layer} layer cannot be read from {name} (a {kind} network)")


def features(model: torch.nn.Module, x: torch.Tensor, layer: str = DEFAULT_LAYER) -> torch.Tensor:
    """(N, D) activation `layer` (one of LAYERS) of a MobileNetV3Small, or of a model wrapping one as `.base`,
    from normalised (N, 1, H, W) input; not yet normalised. UnsupportedModel for another network."""
    check_layer(model, layer)
    net = getattr(model, "base", model)
    if layer == "bneck_grid4":
        return F.adaptive_avg_pool2d(net.bneck(_hswish(net.conv1(x))), 4).flatten(1)
    pooled = F.adaptive_avg_pool2d(net.features(x), 1).flatten(1)
    if _has(net, "linear3", "bn3"):
        return _hswish(net.bn3(net.linear3(pooled)))
    return pooled  # pooled_linear head: `fc` decides from the pooled conv2 features alone


def l2_normalise(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    v = np.asarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


@torch.inference_mode()
def embed_batch(
    runner: Runner,
    imgs: Sequence[np.ndarray],
    model: str | ModelSpec = DEFAULT_MODEL,
    layer: str = DEFAULT_LAYER,
) -> Embeddings:
    """Unit-length features of float32 [0,1] images (the picture the models see), one row each, with the
    model that made them. `model`: a classification model id, "ID@VERSION" or spec. ModelUnavailable when its
    weights are missing or changed."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}: one of {LAYERS}")
    start = perf_counter()
    spec = runner.registry.lookup(model)
    if spec.task != "classification":
        raise ValueError(f"{spec.ref} is a {spec.task} model, not classification")
    net = runner.load(spec)
    check_layer(net, layer, spec.ref)
    ref = ModelRef(spec.model_id, spec.version, spec.weights_sha256)
    imgs = [as_image(i) for i in imgs]
    if not imgs:
        return Embeddings(np.zeros((0, 0), np.float32), ref, layer, {"total": 0.0})
    v = features(net, runner.classifier_input(imgs, spec), layer).float().cpu().numpy()
    return Embeddings(l2_normalise(v), ref, layer, {"total": (perf_counter() - start) * 1000})


class ExactIndex:
    """Exact nearest-neighbour search by Euclidean distance over the rows of `gallery`: numpy brute force, one
    matrix product per `block` queries (memory stays at block x G distances). Building only computes the rows'
    squared norms. bench/bench_similar.py measures it against an index library."""

    def __init__(self, gallery: np.ndarray, block: int = 256):
        self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self.sq = np.einsum("ij,ij->i", self.gallery, self.gallery)
        self.block = block

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances) of the k nearest rows of each query row, each (Q, min(k, G)), nearest first;
        ties by lower index, so results repeat exactly."""
        queries = np.asarray(queries, dtype=np.float32)
        k = max(min(k, len(self.gallery)), 0)
        idx = np.zeros((len(queries), k), np.int64)
        dist = np.zeros((len(queries), k), np.float32)
        if k == 0:
            return idx, dist
        for start in range(0, len(queries), self.block):
            q = queries[start : start + self.block]
            d2 = q @ self.gallery.T
            d2 *= -2.0
            d2 += self.sq[None, :]
            d2 += np.einsum("ij,ij->i", q, q)[:, None]
            np.maximum(d2, 0.0, out=d2)
            part = (
                np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(self.gallery) else np.argsort(d2, axis=1)
            )
            part_d = np.take_along_axis(d2, part, axis=1)
            order = np.lexsort((part, part_d), axis=1)
            idx[start : start + self.block] = np.take_along_axis(part, order, axis=1)
            dist[start : start + self.block] = np.sqrt(np.take_along_axis(part_d, order, axis=1))
        return idx, dist


def nearest(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """ExactIndex(gallery).search(queries, k): for a gallery searched once."""
    return ExactIndex(gallery).search(queries, k)


MAP_METHODS = {"umap": "UMAP", "tsne": "t-SNE"}  # 2-D map methods, by the name a cache key holds


def embedding_map(features: np.ndarray, seed: int = 0, method: str = "tsne") -> np.ndarray:
    """(N, 2) float32 coordinates placing similar embeddings near each other, by `method` (MAP_METHODS): t-SNE
    (scikit-learn) or UMAP (umap-learn), both on cosine distance after PCA to 50 dimensions (the usual first
    step: it keeps the neighbourhoods and makes the neighbour search several times cheaper). A fixed seed makes
    it repeatable: the 2-D map of a set of images."""
    from sklearn.decomposition import PCA

    if method not in MAP_METHODS:
        raise ValueError(f"unknown map method {method!r}: one of {tuple(MAP_METHODS)}")
    v = np.asarray(features, dtype=np.float32)
    if len(v) < 4:  # neither method places fewer points than its neighbourhood size; a trivial map is honest
        return np.zeros((len(v), 2), np.float32)
    if v.shape[1] > 50 and len(v) > 50:
        v = l2_normalise(PCA(50, random_state=seed).fit_transform(v))
    if method == "umap":
        import umap  # imported here: numba compiles on first use, only pages that draw a map pay for it

        # A seed makes UMAP single-threaded anyway (n_jobs=1 says so and silences its warning); a tiny graph's
        # spectral layout is degenerate, so few points start at random.
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(v) - 1), metric="cosine", n_jobs=1,
                            init="spectral" if len(v) > 50 else "random", random_state=seed)  # fmt: skip
        return np.asarray(reducer.fit_transform(v), dtype=np.float32)
    from sklearn.manifold import TSNE

    tsne = TSNE(2, perplexity=min(30.0, (len(v) - 1) / 3), metric="cosine", init="pca", random_state=seed)
    return tsne.fit_transform(v).astype(np.float32)
