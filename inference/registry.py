"""Model discovery and availability: every module in inference/models that defines SPEC and build() is a model."""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from inference import models as _models_pkg
from inference.types import ModelSpec, ModelUnavailable


@lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    # mtime and size are part of the key so that a replaced file is hashed again, an unchanged one never.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=1)
def _discover() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(_models_pkg.__path__):
        module = importlib.import_module(f"{_models_pkg.__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if spec is None:
            continue
        if spec.model_id in found:
            raise RuntimeError(f"model id {spec.model_id!r} defined twice ({info.name})")
        if spec.task == "classification" and set(spec.thresholds) != set(spec.labels):
            raise RuntimeError(f"{spec.model_id}: classification specs need one threshold per label")
        found[spec.model_id] = module
    return found


class Registry:
    """The models found in the code, checked against the weights in `models_dir`."""

    def __init__(self, models_dir: str | Path):
        self.models_dir = Path(models_dir)
        self._modules = _discover()

    def specs(self) -> list[ModelSpec]:
        return [self._modules[k].SPEC for k in sorted(self._modules)]

    def get(self, model_id: str) -> ModelSpec:
        if model_id not in self._modules:
            raise KeyError(f"unknown model id {model_id!r}; known: {sorted(self._modules)}")
        return self._modules[model_id].SPEC

    def builder(self, model_id: str) -> Callable:
        self.get(model_id)
        return self._modules[model_id].build

    def weights_path(self, model_id: str) -> Path:
        return self.models_dir / self.get(model_id).weights_file

    def problem(self, model_id: str) -> str | None:
        """Why the model cannot be used, or None when its weights are present and intact."""
        spec, path = self.get(model_id), self.weights_path(model_id)
        if not path.is_file():
            return f"weights file {spec.weights_file} not found in {self.models_dir}"
        actual = file_sha256(path)
        if actual != spec.weights_sha256:
            return f"sha256 mismatch: expected {spec.weights_sha256}, got {actual}"
        return None

    def check(self, model_id: str) -> ModelSpec:
        """The spec, or ModelUnavailable with the reason."""
        if reason := self.problem(model_id):
            raise ModelUnavailable(model_id, reason)
        return self.get(model_id)

    def available(self) -> list[ModelSpec]:
        return [s for s in self.specs() if self.problem(s.model_id) is None]

    def unavailable(self) -> dict[str, str]:
        return {s.model_id: r for s in self.specs() if (r := self.problem(s.model_id)) is not None}

    def for_task(self, task: str) -> ModelSpec:
        """The first available model for a task (models sorted by id), else ModelUnavailable with why."""
        candidates = [s for s in self.specs() if s.task == task]
        if not candidates:
            raise ModelUnavailable(task, f"no model registered for task {task!r}")
        for spec in candidates:
            if self.problem(spec.model_id) is None:
                return spec
        return self.check(candidates[0].model_id)  # raises with the first candidate's reason
