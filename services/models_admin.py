"""Model administration: the catalogue of model versions, the version that runs per task (an admin's choice,
with its history and rollback) and the per-label operating thresholds of classification models.

The choice per task pins (model id, version, weights sha256). It is honoured while that version exists, is for
that task, is usable and still has those weights; otherwise the registry's default runs and the reason is
reported beside the results (`active_specs`) and on the Models page (`pin_problem`)."""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass

from db import accounts, audit, repo
from db import engine as dbe
from inference import evidence
from inference.registry import TASKS, Registry
from inference.types import ModelSpec, ModelUnavailable
from services import threshold_sets
from services.context import Context

log = logging.getLogger(__name__)
DEFAULT = "registry default"


class ModelChoiceRefused(Exception):
    """An admin's change was not applied (unknown or unusable version, wrong task, bad threshold)."""


@dataclass(frozen=True)
class Pin:
    """An admin's choice for a task, as stored."""

    task: str
    model_id: str
    version: str
    weights_sha256: str
    set_by: str | None
    set_at: dt.datetime

    @property
    def ref(self) -> str:
        return f"{self.model_id}@{self.version}"


@dataclass(frozen=True)
class HistoryEntry:
    """One change of a task's active version; model_id None: back to the registry's default."""

    at: dt.datetime
    model_id: str | None
    version: str | None
    weights_sha256: str | None
    set_by: str | None

    @property
    def ref(self) -> str | None:
        return f"{self.model_id}@{self.version}" if self.model_id else None


@dataclass(frozen=True)
class VersionRow:
    """One model version as the Models page lists it."""

    spec: ModelSpec
    problem: str | None  # None: available
    active: bool  # the version that runs for its task now


def pins(ctx: Context, with_names: bool = True) -> dict[str, Pin]:
    """The stored choice per task (tasks without one run the registry's default); `with_names`: also who chose
    it (reads the users; the analysis path does not need it)."""
    with dbe.read(ctx.engine) as s:
        names = accounts.names(s) if with_names else {}
        return {
            task: Pin(task, r.model_id, r.model_version, r.weights_sha256, names.get(r.set_by_id), r.set_at)
            for task, r in repo.active_models(s).items()
        }


def pin_problem(registry: Registry, pin: Pin) -> str | None:
    """Why a stored choice cannot be honoured now, or None."""
    try:
        spec = registry.get(pin.model_id, pin.version)
    except KeyError as exc:
        return f"{pin.ref} is no longer known: {exc.args[0]}"
    if spec.task != pin.task:
        return f"{pin.ref} is a {spec.task} model, not {pin.task}"
    if spec.weights_sha256 != pin.weights_sha256:
        return (
            f"{pin.ref} now declares other weights (sha256 {spec.weights_sha256[:12]}…, chosen with "
            f"{pin.weights_sha256[:12]}…): choose it again to accept them"
        )
    if (reason := registry.problem(spec)) is not None:
        return f"{pin.ref} unavailable: {reason}"
    return None


def active_specs(
    ctx: Context, registry: Registry, tasks: tuple[str, ...] = TASKS, stored: dict[str, Pin] | None = None
) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """The model version that runs per task (the admin's choice where it can be honoured, else the registry's
    default) and {model or task: reason} for what cannot run, as `analysis.specs_for` returns them. A choice
    that cannot be honoured is reported under its "id@version" so the viewer says why another version ran."""
    chosen, unavailable = {}, {}
    # A page that shows the pins passes them.
    stored = pins(ctx, with_names=False) if stored is None else stored
    for task in tasks:
        pin = stored.get(task)
        prefer = None
        if pin is not None:
            if (problem := pin_problem(registry, pin)) is None:
                prefer = (pin.model_id, pin.version)
            else:
                log.warning("active %s model not used: %s", task, problem)
                unavailable[pin.ref] = f"chosen by an admin but not used: {problem}"
        try:
            chosen[task] = registry.for_task(task, prefer=prefer)
        except ModelUnavailable as exc:
            unavailable[exc.model_id] = exc.reason
    return chosen, unavailable


def catalogue(registry: Registry, running: dict[str, ModelSpec]) -> list[VersionRow]:
    """Every version of every model the registry knows, with its availability and whether it runs now
    (`running`: what `active_specs` chose)."""
    now = {(s.model_id, s.version) for s in running.values()}
    return [
        VersionRow(spec=s, problem=registry.problem(s), active=(s.model_id, s.version) in now)
        for s in registry.specs()
    ]


def history(ctx: Context, task: str) -> list[HistoryEntry]:
    """Every change of the task's active version, newest first."""
    with dbe.read(ctx.engine) as s:
        names = accounts.names(s)
        return [
            HistoryEntry(e.at, e.model_id, e.model_version, e.weights_sha256, names.get(e.set_by_id))
            for e in repo.active_model_history(s, task)
        ]


def set_active(ctx: Context, registry: Registry, task: str, ref: str, user_id: int, also=None) -> ModelSpec:
    """Make "id@version" the version that runs for `task` (one transaction: the choice and its audit row, and
    `also(session)` when given, e.g. the audit row of the evaluation that promoted it)."""
    try:
        spec = registry.resolve(ref)
    except KeyError as exc:
        raise ModelChoiceRefused(str(exc.args[0])) from exc
    if spec.task != task:
        raise ModelChoiceRefused(f"{spec.ref} is a {spec.task} model, not {task}")
    if (reason := registry.problem(spec)) is not None:
        raise ModelChoiceRefused(f"{spec.ref} is unavailable: {reason}")

    def tx(s):
        repo.set_active_model(s, task, spec.model_id, spec.version, spec.weights_sha256, user_id)
        audit.add(s, "model_activated", actor_id=user_id, target=spec.ref,
                  details={"task": task, "weights_sha256": spec.weights_sha256})  # fmt: skip
        if also is not None:
            also(s)

    dbe.write(ctx.engine, tx)
    log.info("active %s model set to %s", task, spec.ref)
    return spec


def use_default(ctx: Context, task: str, user_id: int) -> None:
    """Drop the choice for `task`: the registry's default runs again (recorded in the history)."""

    def tx(s):
        repo.clear_active_model(s, task, user_id)
        audit.add(s, "model_default", actor_id=user_id, target=task, details={"task": task})

    dbe.write(ctx.engine, tx)


def rollback(ctx: Context, registry: Registry, task: str, user_id: int) -> str | None:
    """Restore the choice made before the current one, as a new history entry (one transaction). Returns what
    is chosen now ("id@version", or DEFAULT for the registry's default); None when there is nothing to roll
    back. Refused when the earlier version cannot run any more."""

    def tx(s):
        history = repo.active_model_history(s, task)
        if not history:
            return None
        previous = repo.rollback_active_model(s, task, user_id, history)
        if previous is None or previous.model_id is None:
            restored = DEFAULT
        else:
            pin = Pin(task, previous.model_id, previous.model_version, previous.weights_sha256, None, previous.at)
            if (problem := pin_problem(registry, pin)) is not None:
                raise ModelChoiceRefused(f"cannot roll back: {problem}")  # the transaction is rolled back
            restored = pin.ref
        audit.add(s, "model_rollback", actor_id=user_id, target=restored, details={"task": task})
        return restored

    restored = dbe.write(ctx.engine, tx)
    if restored is not None:
        log.info("active %s model rolled back to %s", task, restored)
    return restored


def thresholds_in_force(s, spec: ModelSpec) -> dict[str, float]:
    """The operating point per label of a classification version: its active threshold set over its defaults."""
    return threshold_sets.in_force_in(s, spec).thresholds


def thresholds(ctx: Context, spec: ModelSpec) -> dict[str, float]:
    with dbe.read(ctx.engine) as s:
        return thresholds_in_force(s, spec)


def save_thresholds(ctx: Context, spec: ModelSpec, values: dict[str, float], user_id: int) -> int:
    """Apply the thresholds that differ from what is in force now: the values that differ from the defaults
    become the next version of the threshold set "<id>@<version> edits" (rule: by hand), activated, in one
    transaction. Returns how many changed."""
    if spec.task != "classification":
        raise ModelChoiceRefused(f"{spec.ref} is a {spec.task} model: it has no thresholds")
    unknown = set(values) - set(spec.labels)
    if unknown:
        raise ModelChoiceRefused(f"{spec.ref} has no label(s) {sorted(unknown)}")
    bad = {
        k: v
        for k, v in values.items()
        if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1)
    }
    if bad:
        raise ModelChoiceRefused(f"thresholds must lie between 0 and 1: {bad}")
    current = thresholds(ctx, spec)
    changed = {k: float(v) for k, v in values.items() if abs(float(v) - current[k]) > 1e-12}
    merged = current | changed
    edits = {k: v for k, v in merged.items() if abs(v - spec.thresholds[k]) > 1e-12}

    def tx(s):
        if edits:
            row = threshold_sets.save_in(s, f"{spec.ref} edits", spec, edits, "manual", user_id)
            threshold_sets.activate_in(s, spec, row.id, user_id)
        else:
            threshold_sets.activate_in(s, spec, None, user_id)
        audit.add(s, "thresholds_changed", actor_id=user_id, target=spec.ref,
                  details={"from": {k: current[k] for k in changed}, "to": changed})  # fmt: skip

    if changed:
        dbe.write(ctx.engine, tx)
    return len(changed)


def reset_thresholds(ctx: Context, spec: ModelSpec, user_id: int) -> int:
    """Back to the model's default thresholds (an activation of the defaults, kept in the threshold history);
    returns how many values differed from them."""
    current = thresholds(ctx, spec)
    n = sum(abs(v - spec.thresholds[k]) > 1e-12 for k, v in current.items())

    def tx(s):
        repo.reset_thresholds(s, spec.model_id, spec.version)  # per-label edits from before threshold sets
        threshold_sets.activate_in(s, spec, None, user_id)
        audit.add(s, "thresholds_changed", actor_id=user_id, target=spec.ref, details={"reset_to_defaults": n})

    if n:
        dbe.write(ctx.engine, tx)
    return n


def _fmt(metric: dict | None) -> str:
    if not metric or metric.get("mean") is None:
        return "—"
    ci = metric.get("ci95")
    return f"{metric['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" (n {metric.get('n', '?')})"


def _paired(d: dict | None) -> str:
    if not d or d.get("difference") is None or not d.get("ci95"):
        return "—"
    return f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def evidence_table(registry: Registry, task: str) -> tuple[dict | None, list[dict]]:
    """(the task's evidence file, one row per measured version: every metric on every set, time per image, and
    whether the rule picks it), for the Models page."""
    data = registry.evidence(task)
    if data is None:
        return None, []
    current = {s.ref: s.weights_sha256 for s in registry.specs() if s.task == task}
    order = evidence.ranking(data, current)
    budget = float(data["rule"]["max_relative_time"])
    rows = []
    for ref, entry in data["versions"].items():
        row = {"Version": ref, "Default by the rule": "yes" if order and order[0] == ref else ""}
        for set_name, figures in (entry.get("metrics") or {}).items():
            for metric, value in figures.items():
                row[f"{metric} · {set_name}"] = _fmt(value)
        rel = entry.get("relative_time")
        row["ms per image"] = f"{entry.get('ms_per_image', float('nan')):.0f}"
        row["× the reference's time"] = "—" if rel is None else f"{rel:g}" + ("" if rel <= budget else " (over the budget)")
        # against the reference: what the non-inferiority check reads; against the choice: how far behind
        row["minus the reference, paired"] = _paired(entry.get("vs_reference"))
        row["minus the rule's choice, paired"] = _paired((data.get("paired_vs_chosen") or {}).get(ref))
        if current.get(ref) != entry.get("weights_sha256"):
            row["Default by the rule"] = "not counted: other weights now" if ref in current else "not installed"
        rows.append(row)
    return data, rows
