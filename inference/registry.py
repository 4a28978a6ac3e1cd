"""Model discovery, versions and availability.

Two kinds of model versions:

- built-in: every module in inference/models that defines SPEC and build() is one version of one model; its
  weights file lives in the models directory (CXR_REVIEW_MODELS_DIR).
- trained: a folder `<root>/<model_id>/<version>/` holding `model.json` and the weights file it names, where the
  roots are `assets/models` in the repository (small models the project trained and ships) and
  `<models_dir>/trained` (what `cxr-review train` writes on this installation). `model.json["family"]` names
  the inference/models module (it declares FAMILY = that name) whose `build(spec)` makes the network from
  `spec.arch`.

A model id can have many versions. `get(id)` is the newest (highest version number, ties broken by created
time; a built-in version counts like any other). `for_task(task)` without a preference runs the version
the task's evidence file ranks first (`<root>/evidence/<task>.json`, see inference/evidence.py), else the
built-in models first (sorted by id), then trained ones; an admin's choice (`prefer=(id, version)`) wins
whenever that version is usable.

`unavailable()` keys built-in models by their model id (as before versions existed) and trained versions by
"id@version"; model.json files that cannot be read at all appear there too, with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import pkgutil
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from inference import evidence
from inference import models as _models_pkg
from inference.types import ModelSpec, ModelUnavailable

log = logging.getLogger(__name__)

MODEL_JSON = "model.json"
ASSETS_MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"
TASKS = ("segmentation", "bone_suppression", "classification")
GATE_TASK = "quality_gate"  # runs before the TASKS and decides whether their output is shown
KNOWN_TASKS = (*TASKS, GATE_TASK)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


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


def version_key(version: str) -> tuple:
    """Sort key for version strings: numeric parts compare as numbers ("1.10.0" > "1.9.2"), text after them."""
    parts = re.split(r"[.\-+_]", version)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _newest_first(specs: list[ModelSpec]) -> list[ModelSpec]:
    """Newest version first; a variant ("1.3.0+1view") right after its own version, so that an id alone never
    means a variant."""
    return sorted(specs, key=lambda s: (version_key(s.metadata.get("variant_of") or s.version),
                                        "variant" not in s.metadata, s.created), reverse=True)  # fmt: skip


def parse_ref(ref: str) -> tuple[str, str | None]:
    """ "ID" -> (ID, None); "ID@VERSION" -> (ID, VERSION)."""
    model_id, sep, version = ref.strip().partition("@")
    if not model_id or (sep and not version):
        raise UnknownModel(f"model reference {ref!r} is not ID or ID@VERSION")
    return model_id, (version if sep else None)


@lru_cache(maxsize=1)
def _discover() -> tuple[dict[str, ModuleType], dict[str, ModuleType]]:
    """({model_id: module with SPEC}, {family: module with FAMILY}) from inference/models."""
    builtins: dict[str, ModuleType] = {}
    families: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(_models_pkg.__path__):
        module = importlib.import_module(f"{_models_pkg.__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if family is not None:
            if family in families:
                raise RuntimeError(f"model family {family!r} defined twice ({info.name})")
            families[family] = module
        spec = getattr(module, "SPEC", None)
        if spec is None:
            continue
        if spec.model_id in builtins:
            raise RuntimeError(f"model id {spec.model_id!r} defined twice ({info.name})")
        if spec.task == "classification" and set(spec.thresholds) != set(spec.labels):
            raise RuntimeError(f"{spec.model_id}: classification specs need one threshold per label")
        builtins[spec.model_id] = module
    return builtins, families


class UnknownModel(KeyError):
    """A model reference the registry cannot resolve (a KeyError, so existing `except KeyError` still work)."""


class InvalidModelJson(ValueError):
    """A model.json that cannot describe a usable model version."""


def spec_from_json(meta: dict, directory: Path, families: dict[str, ModuleType] | None = None) -> ModelSpec:
    """The ModelSpec a model.json describes (InvalidModelJson with the reason when it cannot)."""
    families = _discover()[1] if families is None else families
    required = (
        "model_id",
        "version",
        "task",
        "family",
        "labels",
        "input_size",
        "weights_file",
        "weights_sha256",
    )
    missing = [k for k in required if k not in meta]
    if missing:
        raise InvalidModelJson(f"model.json lacks {missing}")
    model_id, version = str(meta["model_id"]), str(meta["version"])
    if (directory.parent.name, directory.name) != (model_id, version):
        raise InvalidModelJson(
            f"model.json says {model_id}@{version} but lies in {directory.parent.name}/{directory.name}"
        )
    if meta["task"] not in KNOWN_TASKS:
        raise InvalidModelJson(f"unknown task {meta['task']!r}; known: {list(KNOWN_TASKS)}")
    if meta["family"] not in families:
        raise InvalidModelJson(f"no module in inference/models builds family {meta['family']!r}")
    labels = tuple(str(x) for x in meta["labels"])
    thresholds = {str(k): float(v) for k, v in (meta.get("thresholds") or {}).items()}
    if meta["task"] == "classification" and set(thresholds) != set(labels):
        raise InvalidModelJson("classification models need one threshold per label")
    activation = meta.get("activation", "softmax")
    if activation not in ("softmax", "sigmoid"):
        raise InvalidModelJson(f"activation must be softmax or sigmoid, not {activation!r}")
    weights_file = str(meta["weights_file"])
    if not _SAFE_NAME.match(weights_file):
        raise InvalidModelJson(f"weights_file must be a plain file name, not {weights_file!r}")
    h, w = (int(v) for v in meta["input_size"])
    stretch, views, calibration = _runner_settings(meta, labels)
    return ModelSpec(
        model_id=model_id,
        version=version,
        task=meta["task"],
        labels=labels,
        input_size=(h, w),
        normalisation=str(meta.get("normalisation", "")),
        weights_file=weights_file,
        weights_sha256=str(meta["weights_sha256"]),
        intended_use=str(meta.get("intended_use", "")),
        source=str(meta.get("source", "")),
        mean=float(meta.get("mean", 0.0)),
        std=float(meta.get("std", 1.0)),
        thresholds=thresholds,
        activation=activation,
        family=str(meta["family"]),
        arch=dict(meta.get("arch") or {}),
        directory=str(directory),
        created=str(meta.get("created", "")),
        metrics=dict(meta.get("validation") or {}),
        metadata=meta,
        contrast_stretch=stretch,
        test_time_views=views,
        calibration=calibration,
    )


def _runner_settings(meta: dict, labels: tuple[str, ...]):
    """(contrast stretch, test-time views, calibration) of a model.json, checked here so that a bad value makes
    the version unavailable with its reason instead of failing inside an analysis."""
    try:
        return _checked_settings(meta, labels)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InvalidModelJson):
            raise
        raise InvalidModelJson(f"unreadable runner setting: {type(exc).__name__}: {exc}") from exc


def _checked_settings(meta: dict, labels: tuple[str, ...]):
    stretch = None
    if (cs := meta.get("contrast_stretch")) is not None:
        lo, hi = (float(v) for v in cs["percentiles"])
        if not 0 <= lo < hi <= 100:
            raise InvalidModelJson(
                f"contrast_stretch percentiles must satisfy 0 <= low < high <= 100, not {lo}, {hi}"
            )
        stretch = (lo, hi)
    views = []
    for v in (meta.get("test_time_augmentation") or {}).get("views", ()):
        scale, shift = float(v.get("scale", 1.0)), [float(d) for d in v.get("shift", (0, 0))]
        if not (scale > 0 and len(shift) == 2 and all(abs(d) < 1 for d in shift)):
            raise InvalidModelJson(
                f"test-time view {v} needs a positive scale and a shift [dx, dy] within ±1"
            )
        views.append({**v, "scale": scale, "shift": shift})
    views = tuple(views)
    calibration = None
    if (cal := meta.get("calibration")) is not None:
        if meta.get("activation", "softmax") != "sigmoid":
            raise InvalidModelJson("calibration (Platt per label) applies to sigmoid models only")
        intercepts = {str(k): float(b) for k, b in cal["intercepts"].items()}
        if "slopes" in cal:  # one Platt slope per label (fitted out of fold, inference/training/distillation.py)
            slopes = {str(k): float(a) for k, a in cal["slopes"].items()}
            if set(slopes) != set(labels) or set(intercepts) != set(labels) or not all(a > 0 for a in slopes.values()):
                raise InvalidModelJson("calibration needs one positive slope and one intercept per label")
            return stretch, views, {"slopes": slopes, "intercepts": intercepts}
        if set(intercepts) != set(labels) or not float(cal["slope"]) > 0:
            raise InvalidModelJson("calibration needs a positive slope and one intercept per label")
        calibration = {"slope": float(cal["slope"]), "intercepts": intercepts}
    return stretch, views, calibration


def is_candidate(spec: ModelSpec) -> bool:
    """A version trained from corrections that shadow evaluation has not promoted (model.json "status")."""
    return spec.metadata.get("status") == "candidate"


_VARIANT_NAME = re.compile(r"^[a-z0-9]{1,16}$")


def _variants(spec: ModelSpec) -> list[ModelSpec]:
    """The inference variants a model.json declares (`"variants": [{"name": "1view", "test_time_views": 1}]`):
    the same weights run with fewer test-time views, registered as version "<version>+<name>" (SemVer build
    metadata) so that every stored result names the exact way it was computed. A bad entry is logged and left
    out; the version itself stays usable."""
    out = []
    for v in spec.metadata.get("variants") or ():
        try:
            name, n_views = str(v["name"]), int(v["test_time_views"])
            if not _VARIANT_NAME.match(name) or not 1 <= n_views <= max(1, len(spec.test_time_views)):
                raise ValueError(f"name {name!r} / {n_views} views")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: variant %r ignored: %s", spec.ref, v, exc)
            continue
        out.append(dataclasses.replace(
            spec, version=f"{spec.version}+{name}", test_time_views=spec.test_time_views[:n_views],
            metadata={**spec.metadata, "variant_of": spec.version, "variant": dict(v)},
        ))  # fmt: skip
    return out


@lru_cache(maxsize=256)
def _read_spec(path: str, mtime_ns: int, size: int) -> ModelSpec | str:
    """The spec of one model.json, or the reason it is unusable (cached until the file changes)."""
    try:
        meta = json.loads(Path(path).read_text())
        if not isinstance(meta, dict):
            raise InvalidModelJson("model.json is not a JSON object")
        return spec_from_json(meta, Path(path).parent)
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError and InvalidModelJson are ValueErrors
        return f"{type(exc).__name__}: {exc}"


class Registry:
    """The models found in the code and in the trained-model folders, checked against their weights."""

    def __init__(self, models_dir: str | Path, trained_roots: list[str | Path] | None = None):
        """`trained_roots` defaults to [assets/models, <models_dir>/trained]; pass [] for built-ins only."""
        self.models_dir = Path(models_dir)
        self._modules, self._families = _discover()
        roots = [ASSETS_MODELS, self.models_dir / "trained"] if trained_roots is None else trained_roots
        self.trained_roots = [Path(r) for r in roots]

    # -- discovery -------------------------------------------------------------------------------------------
    def _scan(self) -> tuple[dict[tuple[str, str], ModelSpec], dict[str, str]]:
        """Trained versions {(id, version): spec} and {"id@version": reason} for unusable folders. Scanned on
        every call (a few stat calls) so that a newly trained version shows without a restart."""
        found: dict[tuple[str, str], ModelSpec] = {}
        broken: dict[str, str] = {}
        for root in self.trained_roots:
            if not root.is_dir():
                continue
            for path in sorted(root.glob(f"*/*/{MODEL_JSON}")):
                ref = f"{path.parent.parent.name}@{path.parent.name}"
                st = path.stat()
                spec = _read_spec(str(path), st.st_mtime_ns, st.st_size)
                if isinstance(spec, str):
                    broken[ref] = f"{path}: {spec}"
                    continue
                key = (spec.model_id, spec.version)
                if reason := self._weights_of_problem(spec):
                    broken[ref] = f"{path}: {reason}"
                elif key in self._builtin_keys():
                    broken[ref] = f"{path}: version {ref} is a built-in model's version"
                elif key in found:
                    if found[key].weights_sha256 != spec.weights_sha256:
                        broken[ref] = (
                            f"{path}: {ref} is also defined in {found[key].directory} with other weights"
                        )
                else:
                    found[key] = spec
                    for variant in _variants(spec):
                        found[(variant.model_id, variant.version)] = variant
        for ref in broken:
            found.pop(parse_ref(ref), None)  # type: ignore[arg-type]
            base_id, base_version = parse_ref(ref)
            for key in [k for k, s in found.items() if k[0] == base_id and s.metadata.get("variant_of") == base_version]:
                found.pop(key)  # a variant runs its base version's weights: refused with it
        return found, broken

    def _weights_of_problem(self, spec: ModelSpec) -> str | None:
        """A version may run a built-in model's weights as shipped (`"weights_of": "ID@VERSION"`, e.g. the
        shipped classifier with a calibration of its own) instead of a copy of them: it must name that model's
        weights file and sha256 exactly."""
        if (ref := spec.metadata.get("weights_of")) is None:
            return None
        base = next((m.SPEC for m in self._modules.values() if m.SPEC.ref == str(ref)), None)
        if base is None:
            return f"weights_of {ref!r} is not a built-in model version"
        if (spec.weights_file, spec.weights_sha256) != (base.weights_file, base.weights_sha256):
            return f"weights_of {ref}: weights_file and weights_sha256 must be that model's"
        if base.task != spec.task:
            return f"weights_of {ref}: a {base.task} model's weights cannot run a {spec.task} version"
        family = self._families.get(spec.family)
        if not hasattr(family, "from_shipped"):
            return f"weights_of {ref}: family {spec.family!r} cannot run a built-in model's weights"
        if why := getattr(family, "shipped_problem", lambda _: None)(spec):
            return f"weights_of {ref}: {why}"
        return None

    def _builtin_keys(self) -> set[tuple[str, str]]:
        return {(m.SPEC.model_id, m.SPEC.version) for m in self._modules.values()}

    def _all(self) -> list[ModelSpec]:
        trained, _ = self._scan()
        return [m.SPEC for m in self._modules.values()] + list(trained.values())

    # -- lookup ----------------------------------------------------------------------------------------------
    def specs(self) -> list[ModelSpec]:
        """Every version of every model: built-ins first (by id), then trained ones (by id, newest first)."""
        builtin = [self._modules[k].SPEC for k in sorted(self._modules)]
        trained = [s for s in self._all() if not s.builtin]
        return builtin + sorted(_newest_first(trained), key=lambda s: s.model_id)

    def model_ids(self) -> list[str]:
        return sorted({s.model_id for s in self._all()})

    def versions(self, model_id: str) -> list[ModelSpec]:
        """Every version of one model, newest first (KeyError for an unknown id)."""
        found = [s for s in self._all() if s.model_id == model_id]
        if not found:
            raise UnknownModel(f"unknown model id {model_id!r}; known: {self.model_ids()}")
        return _newest_first(found)

    def get(self, model_id: str, version: str | None = None) -> ModelSpec:
        """One version (None: the newest). `model_id` may also be "ID@VERSION"."""
        if version is None and "@" in model_id:
            model_id, version = parse_ref(model_id)
        versions = self.versions(model_id)
        if version is None:
            return versions[0]
        for spec in versions:
            if spec.version == version:
                return spec
        reason = self._scan()[1].get(f"{model_id}@{version}")
        raise UnknownModel(
            f"{model_id} has no usable version {version!r}"
            + (f" ({reason})" if reason else "")
            + f"; known versions: {[s.version for s in versions]}"
        )

    def resolve(self, ref: str) -> ModelSpec:
        """ "ID" (newest version) or "ID@VERSION"; KeyError listing the known ids or versions."""
        model_id, version = parse_ref(ref)
        return self.get(model_id, version)

    def lookup(self, model: str | ModelSpec, version: str | None = None) -> ModelSpec:
        """The registry's spec for an id, "ID@VERSION" or a spec (re-read, so its sha256 is the registry's)."""
        if isinstance(model, ModelSpec):
            return self.get(model.model_id, model.version)
        return self.get(model, version)

    def builder(self, model_id: str | ModelSpec, version: str | None = None) -> Callable:
        """A no-argument callable making the (untrained) network of that version."""
        spec = self.lookup(model_id, version)
        if spec.builtin:
            return self._modules[spec.model_id].build
        family = self._families[spec.family]
        return lambda: family.build(spec)

    def family(self, spec: ModelSpec) -> ModuleType:
        """The inference/models module that builds a trained version (its helpers: input, verdict)."""
        return self._families[spec.family]

    def weights_path(self, model_id: str | ModelSpec, version: str | None = None) -> Path:
        spec = self.lookup(model_id, version)
        shipped = not spec.directory or spec.metadata.get("weights_of")
        return (self.models_dir if shipped else Path(spec.directory)) / spec.weights_file

    # -- availability ----------------------------------------------------------------------------------------
    @staticmethod
    def _key(spec: ModelSpec) -> str:
        return spec.model_id if spec.builtin else spec.ref

    def problem(self, model_id: str | ModelSpec, version: str | None = None) -> str | None:
        """Why the model version cannot be used, or None when its weights are present and intact."""
        try:
            spec = self.lookup(model_id, version)
        except KeyError as exc:
            return str(exc.args[0])
        path = self.weights_path(spec)
        where = path.parent
        if not path.is_file():
            return f"weights file {spec.weights_file} not found in {where}"
        actual = file_sha256(path)
        if actual != spec.weights_sha256:
            return f"sha256 mismatch: expected {spec.weights_sha256}, got {actual}"
        if not spec.builtin and spec.family not in self._families:
            return f"no module in inference/models builds family {spec.family!r}"
        return None

    def check(self, model_id: str | ModelSpec, version: str | None = None) -> ModelSpec:
        """The spec, or ModelUnavailable with the reason (KeyError for an unknown id or version)."""
        spec = self.lookup(model_id, version)
        if reason := self.problem(spec):
            raise ModelUnavailable(self._key(spec), reason)
        return spec

    def available(self) -> list[ModelSpec]:
        return [s for s in self.specs() if self.problem(s) is None]

    def unavailable(self) -> dict[str, str]:
        """{model id (built-in) or "id@version" (trained): reason}, unreadable model.json folders included."""
        out = {self._key(s): r for s in self.specs() if (r := self.problem(s)) is not None}
        return out | self.unreadable()

    def unreadable(self) -> dict[str, str]:
        """{"id@version": reason} for trained-model folders whose model.json cannot describe a usable version."""
        return self._scan()[1]

    def evidence(self, task: str) -> dict | None:
        """The task's measurements that choose its default version (inference/evidence.py), if any."""
        return evidence.read(self.trained_roots, task)

    def for_task(self, task: str, prefer: tuple[str, str] | None = None) -> ModelSpec:
        """The model version to run for a task.

        `prefer` = (model_id, version) an admin made active: used when it exists, is for this task and is
        usable; otherwise (logged) the fallback: the first available version in the order of the task's evidence
        (inference/evidence.py: best measured within the viewer's budget), then the versions it does not rank:
        built-in models first (sorted by id), then trained ones (by id, newest version first). ModelUnavailable with why when none is usable.
        """
        if prefer is not None:
            model_id, version = prefer
            try:
                spec = self.get(model_id, version)
            except KeyError as exc:
                log.warning("active %s model %s@%s not found: %s", task, model_id, version, exc.args[0])
            else:
                if spec.task != task:
                    log.warning("active %s model %s is a %s model; ignored", task, spec.ref, spec.task)
                elif (reason := self.problem(spec)) is not None:
                    log.warning("active %s model %s unavailable: %s", task, spec.ref, reason)
                else:
                    return spec
        # a candidate (learnt from corrections, not promoted) runs only where an admin chose it or in shadow mode
        candidates = [s for s in self.specs() if s.task == task and not is_candidate(s)]
        if not candidates:
            raise ModelUnavailable(task, f"no model registered for task {task!r}")
        if (measured := self.evidence(task)) is not None:
            order = evidence.ranking(measured, {s.ref: s.weights_sha256 for s in candidates})
            rank = {ref: i for i, ref in enumerate(order)}
            candidates.sort(key=lambda s: rank.get(s.ref, len(rank)))  # stable: unmeasured keep their order
        for spec in candidates:
            if self.problem(spec) is None:
                return spec
        return self.check(candidates[0])  # raises with the first candidate's reason
