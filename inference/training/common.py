"""Shared pieces of the training loops: seeding, splits, progress, provenance and the model-version writer."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from inference.device import resolve_device
from inference.registry import ASSETS_MODELS, MODEL_JSON, Registry, version_key
from inference.runner import Runner, verified_state_dict
from inference.types import ModelSpec

log = logging.getLogger("cxr_review.training")
REPO = Path(__file__).resolve().parents[2]
WEIGHTS_FILE = "weights.pt"
CHECKPOINT_FILE = "checkpoint_best.pt"
TRAIN_LOG = "train_log.jsonl"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Run:
    """What every training run starts with: its clock, the code it runs (taken now: the tree may change
    during a long run), a generator for shuffling and augmentation, and the device."""

    clock: Stopwatch
    code: str
    rng: np.random.Generator
    device: torch.device


def start_run(seed: int, device: str, threads: int | None) -> Run:
    clock = Stopwatch()
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    return Run(clock, code_version(), np.random.default_rng(seed), resolve_device(device))


def new_version_dir(out: Path, model_id: str, version: str | None) -> tuple[str, Path, EpochLogger]:
    """(version, its folder, the epoch logger writing into it); `version` None: the next free one. Refuses a
    folder that already holds a finished version; a half-written one (no model.json) is reused. The next free
    one is also past the versions shipped in assets/models, which the app sees beside `out`: the same number
    there with other weights would make both unusable."""
    shipped = [d.name for d in (ASSETS_MODELS / model_id).glob("*") if d.is_dir() and not d.name.startswith(".")]
    if version in shipped and Path(out).resolve() != ASSETS_MODELS.resolve():
        raise FileExistsError(f"{model_id}@{version} is shipped in assets/models; choose another --version")
    version = version or next_version(out, model_id, also=shipped)
    vdir = out / model_id / version
    if (vdir / MODEL_JSON).exists():
        raise FileExistsError(f"{vdir} holds a model version already; choose another --version")
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / TRAIN_LOG).unlink(missing_ok=True)
    return version, vdir, EpochLogger(vdir / TRAIN_LOG)


def group_order(groups: Iterable[str], seed: int | str) -> list[str]:
    """The distinct groups in a fixed pseudo-random order: sorted by sha256(seed:group)."""
    return sorted(set(groups), key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())


def patient_folds(patients: Sequence[str], folds: int, seed: int | str) -> tuple[list[str], np.ndarray]:
    """(the distinct patients in group_order, the fold 0..folds-1 of each item): patients dealt round-robin in that
    order, so a patient's images share one fold."""
    order = group_order(patients, seed)
    fold_of = {g: i % folds for i, g in enumerate(order)}
    return order, np.array([fold_of[p] for p in patients], dtype=int)


def split_by_group(items: Sequence[str], groups: Sequence[str], val_fraction: float, seed: int | str):
    """(train, val) item lists; every group (patient, or the image itself) lands wholly on one side.

    Deterministic for a seed: groups are ordered by group_order, the first val_fraction go to val."""
    order = group_order(groups, seed)
    n_val = max(1, round(len(order) * val_fraction))
    val_groups = set(order[:n_val])
    train = [i for i, g in zip(items, groups, strict=True) if g not in val_groups]
    val = [i for i, g in zip(items, groups, strict=True) if g in val_groups]
    return train, val


def file_list_sha256(paths: Iterable[Path]) -> str:
    """Hash of the data a model saw: sorted "name<TAB>sha256-of-bytes" lines."""
    lines = []
    for p in sorted(Path(p) for p in paths):
        lines.append(f"{p.name}\t{hashlib.sha256(p.read_bytes()).hexdigest()}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def code_version() -> str:
    """git revision of the code (with "+dirty" when the work tree has changes), or "unknown"."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: "cxr-review <argv...>"."""
    return shlex.join(["cxr-review", *(sys.argv[1:] if argv is None else argv)])


def next_version(out_root: Path, model_id: str, also: Iterable[str] = ()) -> str:
    """ "1.0.0" for a new model id in out_root, else the highest existing version (there or in `also`, e.g. the
    versions the registry knows elsewhere) with its minor part + 1."""
    existing = [d.name for d in (out_root / model_id).glob("*") if d.is_dir() and not d.name.startswith(".")]
    existing += list(also)
    if not existing:
        return "1.0.0"
    top = max(existing, key=version_key)
    parts = top.split(".")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return f"{parts[0]}.{int(parts[1]) + 1}.0"
    return f"{top}.1"


def fp16_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as fp16 (half the size; the runner loads them into float32 parameters)."""
    return {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in state.items()
    }


def rounded_fp16(model: torch.nn.Module) -> None:
    """Round a model's floating parameters and buffers through fp16 in place, so that the metrics measured
    afterwards are those of the weights that will be written."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


@dataclass
class EpochLogger:
    """One log line per epoch (stderr, via logging) and a JSON line per epoch in the version folder."""

    path: Path | None
    history: list[dict] = field(default_factory=list)

    def __call__(self, record: dict) -> None:
        self.history.append(record)
        text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        log.info("epoch %s", text)  # `train` lets cxr_review.training log at INFO
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def progress(iterable, total: int, desc: str, enabled: bool = True):
    """tqdm progress bar on stderr when tqdm is installed and enabled, else the iterable itself."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def write_model_json(version_dir: Path, meta: dict) -> Path:
    """model.json written atomically (the registry never sees half a file); returns its path."""
    tmp = version_dir / f".{MODEL_JSON}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, version_dir / MODEL_JSON)
    return version_dir / MODEL_JSON


def write_version(version_dir: Path, model: torch.nn.Module, meta: dict) -> dict:
    """Write fp16 weights, then model.json (last: the registry never sees half a version).

    `meta` holds everything but the weight fields, which are filled in here. Returns the model.json content."""
    version_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(fp16_state(model.state_dict()), buf)
    data = buf.getvalue()
    (version_dir / WEIGHTS_FILE).write_bytes(data)
    meta = {
        **meta,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "weights_dtype": "float16",
        "weights_bytes": len(data),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_model_json(version_dir, meta)
    return meta


def base_meta(
    *, model_id: str, version: str, task: str, family: str, argv: Sequence[str] | None, code: str | None = None
) -> dict:
    """Identity and provenance fields of model.json; `code`: Run.code, else code_version() now."""
    return {
        "format": 1,
        "model_id": model_id,
        "version": version,
        "task": task,
        "family": family,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code or code_version(),
        "command": command_line(argv),
        "torch": torch.__version__,
    }


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def s(self) -> float:
        return time.perf_counter() - self.t0


def registry_with(models_dir: Path | None, out: Path) -> Registry:
    """The versions the app sees (built-ins, assets/models, <models dir>/trained) plus those under --out."""
    base = Registry(models_dir or out)
    roots = list(dict.fromkeys(p.resolve() for p in [*base.trained_roots, out]))
    return Registry(base.models_dir, trained_roots=roots)


def resolve_init(ref: str, models_dir: Path | None, out: Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The usable version `ref` names and its float32 state_dict, looked up among the versions the app sees
    (built-ins, assets/models, <models dir>/trained) plus those under --out, where earlier runs wrote."""
    registry = registry_with(models_dir, out)
    spec = registry.check(registry.resolve(ref))
    state = verified_state_dict(registry, spec)
    return spec, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


class BestKeeper:
    """Keeps the best epoch's weights (and its checkpoint file) and says when the wall-clock budget is spent."""

    def __init__(self, checkpoint: Path, max_minutes: float | None, clock: Stopwatch):
        self.checkpoint, self.max_minutes, self.clock = checkpoint, max_minutes, clock
        self.score, self.epoch, self.state = -1.0, 0, None

    def offer(self, model: torch.nn.Module, score: float, epoch: int | str, **extra) -> bool:
        """Keep the model if `score` beats the best so far; True when it did."""
        if score <= self.score:
            return False
        self.score, self.epoch = score, epoch
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"epoch": epoch, "score": score, **extra, "state_dict": self.state}, self.checkpoint)
        return True

    def out_of_time(self, epoch: int) -> bool:
        if self.max_minutes is None or self.clock.s <= self.max_minutes * 60:
            return False
        log.warning("stopping after epoch %d: --max-minutes %.1f reached", epoch, self.max_minutes)
        return True

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best weights onto the CPU, rounded through fp16 as they will be written."""
        model.load_state_dict(self.state)
        model.cpu()
        rounded_fp16(model)


def publish(
    vdir: Path,
    model: torch.nn.Module,
    meta: dict,
    *,
    out: Path,
    device,
    clock: Stopwatch,
    evaluate: Callable[[Runner, str], dict],
    keep_checkpoint: bool,
    history: list[dict],
) -> dict:
    """Write the version, measure it with `evaluate(runner, "id@version")` and rewrite its model.json with
    those validation metrics. The stored metrics are those of the written fp16 weights, run exactly as the app
    runs them. Returns the model.json content plus its path and the epoch history."""
    meta = write_version(vdir, model, meta)
    runner = Runner(Registry(out, trained_roots=[out]), str(device))
    meta["validation"] = evaluate(runner, f"{meta['model_id']}@{meta['version']}")
    meta["training"]["wall_seconds_with_evaluation"] = round(clock.s, 1)
    path = write_model_json(vdir, meta)
    if not keep_checkpoint:
        (vdir / CHECKPOINT_FILE).unlink(missing_ok=True)
    return meta | {"model_json": str(path), "history": history}
