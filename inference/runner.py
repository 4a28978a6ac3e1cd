"""Load models (sha256-checked, cached) and run them on display images at any resolution.

Inputs are 2D float32 numpy images in [0,1], standard polarity (bone bright): the display-rendered radiograph
divided by 255. Every output comes back at the input's resolution with its ModelRef and timings_ms.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from time import perf_counter
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from inference.calibration import apply_platt
from inference.device import resolve_device
from inference.gradcam import grad_cam
from inference.postprocess import clean_label_map, positives
from inference.preprocess import stretch_contrast
from inference.registry import Registry
from inference.types import (
    SCORE_KINDS,
    AnatomyResult,
    BoneResult,
    ClassificationResult,
    GateResult,
    ModelRef,
    ModelSpec,
    ModelUnavailable,
)


def as_image(img: np.ndarray) -> np.ndarray:
    """Validated contiguous float32 HxW in [0,1]; 8-bit pixels or colour images are rejected, not guessed at."""
    a = np.asarray(img)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a 2D grayscale image, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
        raise ValueError(
            f"pixel values must lie in [0,1], got {lo:.4g}..{hi:.4g}; divide 8-bit pixels by 255"
        )
    return a


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W); antialiased like PIL's bilinear, which the README's figures used."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def verified_state_dict(registry: Registry, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The weights of a version as stored (fp16 stays fp16), from bytes whose sha256 is checked against the
    spec: hashing the very bytes deserialised means a file swapped after the registry's check cannot slip in."""
    data = registry.weights_path(spec).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.weights_sha256:
        raise ModelUnavailable(
            spec.model_id if spec.builtin else spec.ref,
            f"sha256 mismatch: expected {spec.weights_sha256}, got {actual}",
        )
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if spec.metadata.get("weights_of"):  # a built-in's weights as shipped, in the layout of this version's family
        try:
            state = registry.family(spec).from_shipped(state, spec)
        except (AttributeError, KeyError, ValueError) as exc:  # the registry refuses these first; never a crash
            raise ModelUnavailable(spec.ref, f"cannot run the weights of {spec.metadata['weights_of']}: {exc}") from exc
    return state


def square_offsets(h: int, w: int) -> tuple[int, int, int]:
    """(side, top, left) of an h x w image centred in the square it is zero-padded to."""
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def pad_square(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(N, C, H, W) zero-padded to a centred square, with the (top, left) offset of the original in it."""
    h, w = x.shape[-2:]
    side, top, left = square_offsets(h, w)
    return F.pad(x, (left, side - w - left, top, side - h - top)), top, left


def _batch_statistics(model: torch.nn.Module) -> bool:
    """True when a BatchNorm normalises with the batch's own statistics (the shipped anatomy model): then
    images must go through one at a time, or they would change each other's outputs."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.track_running_stats
        for m in model.modules()
    )


def _views_one_at_a_time(model: torch.nn.Module, device: torch.device) -> bool:
    # On the CPU one 512 px view at a time is faster than a batch of five (674-761 ms against 1078-1092 ms
    # for anatomy_unet_smp@1.2.0, 2 threads): the batch's activations do not stay in cache.
    return device.type == "cpu" or _batch_statistics(model)


def _tta_log_probs(
    model: torch.nn.Module, x: torch.Tensor, views: Sequence[dict], mean: float, std: float
) -> torch.Tensor:
    """Log of the class probabilities averaged over views of `x` (1, 1, H, W in [0,1]).

    Each view {"scale": s, "shift": [dx, dy]} zooms the image by s about its centre and moves it by (dx, dy)
    image widths, the kind of change the training augmentation made; the view's probabilities are warped back
    before averaging, and pixels a view did not see do not count. No flips: the heart's side is anatomy.
    The views go through the network as one batch on a GPU, one at a time on the CPU or when the network's
    BatchNorms use batch statistics.
    """
    fwd, back = [], []
    for view in views:
        s = float(view.get("scale", 1.0))
        tx, ty = (2.0 * float(v) for v in view.get("shift", (0.0, 0.0)))  # grid units span 2 per width
        # affine_grid maps output to input coordinates: the view shows input point (p - t) / s at p ...
        fwd.append([[1 / s, 0, -tx / s], [0, 1 / s, -ty / s]])
        # ... so image point q sits at s * q + t in the view.
        back.append([[s, 0, tx], [0, s, ty]])
    n = len(views)
    fwd_t, back_t = (torch.tensor(t, dtype=x.dtype, device=x.device) for t in (fwd, back))
    grid = F.affine_grid(fwd_t, [n, *x.shape[1:]], align_corners=False)
    seen = (
        F.grid_sample(x.expand(n, -1, -1, -1), grid, padding_mode="zeros", align_corners=False) - mean
    ) / std
    if _views_one_at_a_time(model, x.device):
        probs = torch.cat([model(seen[i : i + 1]).softmax(1) for i in range(n)])
    else:
        probs = model(seen).softmax(1)
    grid = F.affine_grid(back_t, list(probs.shape), align_corners=False)
    probs = F.grid_sample(probs, grid, padding_mode="zeros", align_corners=False)
    cover = F.grid_sample(torch.ones_like(seen[:, :1]), grid, padding_mode="zeros", align_corners=False)
    return (probs.sum(0, keepdim=True) / cover.sum(0, keepdim=True).clamp_min(1e-6)).clamp_min(1e-8).log()


class _Clock:
    """Named phase durations in ms; waits for CUDA so GPU timings are real, not launch times."""

    def __init__(self, device: torch.device):
        self.ms: dict[str, float] = {}
        self._cuda = device.type == "cuda"
        self._start = perf_counter()

    @contextmanager
    def phase(self, name: str):
        t = perf_counter()
        yield
        if self._cuda:
            torch.cuda.synchronize()
        self.ms[name] = self.ms.get(name, 0.0) + (perf_counter() - t) * 1000

    def done(self) -> dict[str, float]:
        self.ms["total"] = (perf_counter() - self._start) * 1000
        return self.ms


class Runner:
    """Holds loaded modules keyed by (model_id, version, sha256, device); safe to share between threads."""

    def __init__(self, registry: Registry, device: str = "auto", channels_last: bool | None = None):
        self.registry = registry
        self.device = resolve_device(device)
        # Conv weights in channels_last on the CPU: oneDNN's faster path (bench/bench_infer.py: the anatomy
        # U-Net 140 -> 94 ms, the classifier 6.6 -> 5.3 ms, the rest unchanged); untried on CUDA, so off there.
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        self._loaded: dict[tuple[str, str, str, str], torch.nn.Module] = {}
        self._lock = threading.Lock()

    def load(self, model_id: str | ModelSpec, version: str | None = None) -> torch.nn.Module:
        """The eval-mode module of one model version (None: the newest; `model_id` may be "ID@VERSION" or a
        spec), loaded once; raises ModelUnavailable when weights are missing or changed."""
        spec = self.registry.check(
            model_id, version
        )  # cheap: the file hash is cached by path, mtime and size
        key = (spec.model_id, spec.version, spec.weights_sha256, str(self.device))
        # Built outside inference mode even when called from it: Grad-CAM needs autograd through the weights.
        with self._lock, torch.inference_mode(False):
            if key not in self._loaded:
                module = self.registry.builder(spec)()
                state = verified_state_dict(self.registry, spec)
                # Trained versions may ship fp16 weights: load_state_dict copies them into the float32
                # parameters the builder made.
                module.load_state_dict(state, strict=True)
                module = module.eval().to(self.device)
                if self.channels_last:
                    module = module.to(memory_format=torch.channels_last)
                self._loaded[key] = module
            return self._loaded[key]

    def _prepare(
        self, task: str, model_id: str | ModelSpec | None, clock: _Clock, version: str | None = None
    ) -> tuple[ModelSpec, torch.nn.Module]:
        if model_id is None:
            spec = self.registry.for_task(task)
        else:
            spec = self.registry.lookup(model_id, version)
        if spec.task != task:
            raise ValueError(f"{spec.ref} is a {spec.task} model, not {task}")
        with clock.phase("load"):
            return spec, self.load(spec)

    def _tensor(self, img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(img).to(self.device)[None, None]

    @staticmethod
    def _ref(spec: ModelSpec) -> ModelRef:
        return ModelRef(spec.model_id, spec.version, spec.weights_sha256)

    @torch.inference_mode()
    def segment_anatomy(
        self, img: np.ndarray, model_id: str | ModelSpec | None = None, version: str | None = None
    ) -> AnatomyResult:
        """Label map (0 bg, 1 lungs, 2 heart, 3 clavicles) with speckles removed, at input resolution.

        `model_id` (here and in every method below): None runs the registry's model for the task; an id runs
        its newest version unless `version` is given; "ID@VERSION" or a ModelSpec run exactly that version."""
        img = as_image(img)
        clock = _Clock(self.device)
        spec, model = self._prepare("segmentation", model_id, clock, version)
        h, w = img.shape
        with clock.phase("preprocess"):
            if spec.contrast_stretch:
                img = stretch_contrast(img, *spec.contrast_stretch)
            # Zero-pad to a square first (as HybridGNet does) so the anatomy keeps its aspect ratio.
            x, top, left = pad_square(self._tensor(img))
            side = x.shape[-1]
            x = resize(x, spec.input_size)
        with clock.phase("forward"):
            if spec.test_time_views:
                logits = _tta_log_probs(model, x, spec.test_time_views, spec.mean, spec.std)
            else:  # batch of one: the BatchNorms use per-image statistics
                logits = model((x - spec.mean) / spec.std)
        with clock.phase("postprocess"):
            # Upsample logits, not labels, so boundaries stay smooth at full resolution.
            # channels_last first: upsampling a few class channels is several times faster in that layout on
            # the CPU (14 against 75 ms at 785 px); the test-time-view path hands back the other one
            if self.channels_last:
                logits = logits.contiguous(memory_format=torch.channels_last)
            logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
            labels = logits[0, :, top : top + h, left : left + w].argmax(0).to(torch.uint8).cpu().numpy()
            label_map = clean_label_map(labels)
        return AnatomyResult(label_map, self._ref(spec), clock.done())

    @torch.inference_mode()
    def quality_gate(
        self, img: np.ndarray, model_id: str | ModelSpec | None = None, version: str | None = None
    ) -> GateResult:
        """Is this a frontal chest radiograph the models can read? Passed when P(frontal) reaches the version's
        threshold; otherwise the reasons (its family's `verdict`)."""
        img = as_image(img)
        clock = _Clock(self.device)
        spec, model = self._prepare("quality_gate", model_id, clock, version)
        family = self.registry.family(spec)
        with clock.phase("preprocess"):
            x = self._tensor(family.gate_input(img, spec.input_size[0]))
        with clock.phase("forward"):
            p = torch.softmax(model((x - spec.mean) / spec.std), 1)[0].cpu().numpy()
        probs = {label: float(v) for label, v in zip(spec.labels, p, strict=True)}
        passed, reasons = family.verdict(probs, spec.thresholds.get(family.FRONTAL, 0.5))
        return GateResult(passed, reasons, probs, self._ref(spec), clock.done())

    @torch.inference_mode()
    def suppress_bones_batch(
        self,
        imgs: Sequence[np.ndarray],
        model_id: str | ModelSpec | None = None,
        version: str | None = None,
    ) -> list[BoneResult]:
        """Soft-tissue images, one per input, each at its own resolution; timings are for the whole batch."""
        imgs = [as_image(i) for i in imgs]
        clock = _Clock(self.device)
        spec, model = self._prepare("bone_suppression", model_id, clock, version)
        with clock.phase("preprocess"):
            x = torch.cat([resize(self._tensor(i), spec.input_size) for i in imgs])
            x = (x - spec.mean) / spec.std
        with clock.phase("forward"):
            out = model(x)
        with clock.phase("postprocess"):
            soft = [
                resize(o[None], i.shape).clamp_(0, 1)[0, 0].cpu().numpy()
                for o, i in zip(out, imgs, strict=True)
            ]
        timings = clock.done()
        return [BoneResult(s, self._ref(spec), timings) for s in soft]

    def suppress_bones(
        self, img: np.ndarray, model_id: str | ModelSpec | None = None, version: str | None = None
    ) -> BoneResult:
        return self.suppress_bones_batch([img], model_id, version)[0]

    def classifier_input(self, imgs: Sequence[np.ndarray], spec: ModelSpec) -> torch.Tensor:
        """The normalised (N, 1, H, W) batch a classifier sees, on this runner's device."""
        x = torch.cat([resize(self._tensor(i), spec.input_size) for i in imgs])
        return (x - spec.mean) / spec.std

    @torch.inference_mode()
    def classify_batch(
        self,
        imgs: Sequence[np.ndarray],
        model_id: str | ModelSpec | None = None,
        thresholds: dict[str, float] | None = None,
        version: str | None = None,
    ) -> list[ClassificationResult]:
        """Scores per label and `positive` per operating point: softmax across labels for single-label models
        (the shipped one), an independent sigmoid per label for multi-label ones (spec.activation); the
        result's score_kind says which.

        `thresholds` overrides the spec's defaults label by label (e.g. values an admin edited).
        Timings are for the whole batch.
        """
        imgs = [as_image(i) for i in imgs]
        clock = _Clock(self.device)
        spec, model = self._prepare("classification", model_id, clock, version)
        with clock.phase("preprocess"):
            x = self.classifier_input(imgs, spec)
        with clock.phase("forward"):
            logits = model(x).float()
            if cal := spec.calibration:  # fitted per version (inference/calibration.py)
                intercepts = [cal["intercepts"][label] for label in spec.labels]
                slope = [cal["slopes"][label] for label in spec.labels] if "slopes" in cal else cal["slope"]
                probs = apply_platt(logits.cpu().numpy(), slope, intercepts)
            elif spec.activation == "sigmoid":
                probs = torch.sigmoid(logits).cpu().numpy()
            else:
                probs = torch.softmax(logits, dim=1).cpu().numpy()
        thr = {**spec.thresholds, **(thresholds or {})}
        timings = clock.done()
        results = []
        for p in probs:
            scores = {label: float(v) for label, v in zip(spec.labels, p, strict=True)}
            positive = positives(scores, thr)
            results.append(
                ClassificationResult(
                    scores, thr, positive, self._ref(spec), timings, score_kind=SCORE_KINDS[spec.score_kind]
                )
            )
        return results

    def classify(
        self,
        img: np.ndarray,
        model_id: str | ModelSpec | None = None,
        thresholds: dict[str, float] | None = None,
        version: str | None = None,
    ) -> ClassificationResult:
        return self.classify_batch([img], model_id, thresholds, version)[0]

    def gradcam(
        self,
        img: np.ndarray,
        label: str | None = None,
        model_id: str | ModelSpec | None = None,
        version: str | None = None,
    ) -> np.ndarray:
        """Grad-CAM heatmap (float32 HxW in [0,1], input resolution) of `label`, or of the most probable label if
        None: by the version's probabilities, which a per-finding calibration may order otherwise than its logits."""
        if label is None:
            label = self.classify(img, model_id, version=version).top_label
        return next(iter(self._cams(img, [label], model_id, version).values()))

    def gradcams(
        self,
        img: np.ndarray,
        labels: Sequence[str] | None = None,
        model_id: str | ModelSpec | None = None,
        version: str | None = None,
    ) -> dict[str, np.ndarray]:
        """{label: Grad-CAM heatmap} for `labels` (all labels when None) from one backbone pass: far cheaper
        than one gradcam() call per label."""
        return self._cams(img, "all" if labels is None else labels, model_id, version)

    def _cams(
        self,
        img: np.ndarray,
        which: Sequence[str] | Literal["all"],
        model_id: str | ModelSpec | None,
        version: str | None = None,
    ) -> dict[str, np.ndarray]:
        img = as_image(img)
        clock = _Clock(self.device)
        spec, model = self._prepare("classification", model_id, clock, version)
        labels = spec.labels if which == "all" else which
        unknown = [label for label in labels if label not in spec.labels]
        if unknown:
            raise ValueError(f"{unknown} not labels of {spec.model_id}: {spec.labels}")
        indices = [spec.labels.index(label) for label in labels]
        with torch.no_grad():  # grad_cam enables autograd for the head only
            cams, indices = grad_cam(model, self.classifier_input([img], spec), indices)
            cams = F.interpolate(cams[None], size=img.shape, mode="bilinear", align_corners=False)[0]
            cams = cams.clamp_(0, 1).cpu().numpy()
        return {spec.labels[i]: cam for i, cam in zip(indices, cams, strict=True)}


def default_models_dir() -> Path:
    """$CXR_REVIEW_MODELS_DIR, else <repo>/../shared/models."""
    default = Path(__file__).resolve().parents[2] / "shared" / "models"
    return Path(os.environ.get("CXR_REVIEW_MODELS_DIR", default))


@cache
def default_runner() -> Runner:
    """Process-wide runner on $CXR_REVIEW_MODELS_DIR and $CXR_REVIEW_DEVICE (auto when unset)."""
    return Runner(Registry(default_models_dir()), os.environ.get("CXR_REVIEW_DEVICE", "auto"))


def segment_anatomy(img: np.ndarray) -> AnatomyResult:
    return default_runner().segment_anatomy(img)


def suppress_bones(img: np.ndarray) -> BoneResult:
    return default_runner().suppress_bones(img)


def suppress_bones_batch(imgs: Sequence[np.ndarray]) -> list[BoneResult]:
    return default_runner().suppress_bones_batch(imgs)


def classify(img: np.ndarray, thresholds: dict[str, float] | None = None) -> ClassificationResult:
    return default_runner().classify(img, thresholds=thresholds)


def classify_batch(
    imgs: Sequence[np.ndarray], thresholds: dict[str, float] | None = None
) -> list[ClassificationResult]:
    return default_runner().classify_batch(imgs, thresholds=thresholds)


def gradcam(img: np.ndarray, label: str | None = None) -> np.ndarray:
    return default_runner().gradcam(img, label)


def gradcams(img: np.ndarray, labels: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    return default_runner().gradcams(img, labels)
