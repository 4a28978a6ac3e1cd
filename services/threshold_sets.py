"""Threshold sets: a finding's operating threshold chosen by a rule on an evaluation set (target sensitivity,
target specificity, Youden, maximum F1) or by hand on the Models page, saved as a named, versioned set bound to
one classification model version (id, version, weights sha256), with who, when, on which set and by which rule.

An admin activates a set for its model version; the newest activation is in force (the viewer, the report and
`cxr-review infer` read it), earlier ones are the history, and a rollback restores the one before as a new
activation. Without any activation a version runs at its defaults (or at per-label edits made before threshold
sets existed, which migration 0011 turned into a set)."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db import accounts, audit, repo
from db import engine as dbe
from db.models import ThresholdSet, ThresholdSetActivation
from inference import curves
from inference.types import ModelSpec
from services.context import Context

RULE_NAMES = {
    "target_sensitivity": "target sensitivity",
    "target_specificity": "target specificity",
    "youden": "Youden's J",
    "max_f1": "maximum F1",
    "per_finding": "a rule per finding",
    "manual": "set by hand",
}
DEFAULTS = "model defaults"


class ThresholdSetRefused(Exception):
    """A threshold set was not saved or activated (bad values, wrong model, nothing to roll back)."""


@dataclass(frozen=True)
class SetRow:
    id: int
    name: str
    version: int
    model_id: str
    model_version: str
    weights_sha256: str
    thresholds: dict[str, float]
    rule: str
    target: float | None
    rules: dict | None
    eval_set_id: int | None
    created_by: str | None
    created_at: dt.datetime

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class InForce:
    """The thresholds a version runs at now and where they come from (`source`: a set's label, or DEFAULTS)."""

    thresholds: dict[str, float]
    source: str
    set_id: int | None = None
    note: str | None = None  # why an activated set is not honoured


@dataclass(frozen=True)
class Activation:
    at: dt.datetime
    set_id: int | None
    label: str  # the set's label, or DEFAULTS
    by: str | None
    rollback: bool = False


def _row(r: ThresholdSet, names: dict[int, str]) -> SetRow:
    return SetRow(r.id, r.name, r.version, r.model_id, r.model_version, r.weights_sha256, json.loads(r.thresholds),
                  r.rule, r.target, json.loads(r.rules) if r.rules else None, r.eval_set_id,
                  names.get(r.created_by_id), r.created_at)  # fmt: skip


def _activations(s, spec: ModelSpec) -> list[ThresholdSetActivation]:
    return _activations_of(s, spec.model_id, spec.version)


def _activations_of(s, model_id: str, version: str) -> list[ThresholdSetActivation]:
    return list(s.scalars(
        select(ThresholdSetActivation)
        .where(ThresholdSetActivation.model_id == model_id, ThresholdSetActivation.model_version == version)
        .order_by(ThresholdSetActivation.id.desc())
    ))  # fmt: skip


def in_force_in(s, spec: ModelSpec) -> InForce:
    """What `in_force` returns, inside the caller's session."""
    return in_force_of(s, spec.model_id, spec.version, spec.weights_sha256, spec.thresholds)


def in_force_of(s, model_id: str, version: str, weights_sha256: str, defaults: dict[str, float]) -> InForce:
    """`in_force_in` for a version known by its stored results (id, version, weights and their default
    thresholds) rather than by the registry, e.g. one that is no longer installed."""
    defaults = dict(defaults)
    history = _activations_of(s, model_id, version)
    if not history:  # per-label edits of a database that never had threshold sets
        edited = repo.thresholds(s, model_id, version)
        merged = {k: edited.get(k, v) for k, v in defaults.items()}
        return InForce(merged, "per-label edits" if edited else DEFAULTS)
    newest = history[0]
    if newest.threshold_set_id is None:
        return InForce(defaults, DEFAULTS)
    row = s.get(ThresholdSet, newest.threshold_set_id)
    if row.weights_sha256 and row.weights_sha256 != weights_sha256:
        return InForce(defaults, DEFAULTS, note=f"{row.name} v{row.version} was chosen for other weights")
    chosen = json.loads(row.thresholds)
    return InForce({k: float(chosen.get(k, v)) for k, v in defaults.items()}, f"{row.name} v{row.version}", row.id)


def in_force(ctx: Context, spec: ModelSpec) -> InForce:
    """The thresholds `spec` runs at now (its active set over its defaults) and where they come from."""
    with dbe.read(ctx.engine) as s:
        return in_force_in(s, spec)


def propose(
    y_by_finding: dict[str, tuple], rule: str, target: float | None,
    own: dict[str, tuple[str, float | None]] | None = None,
) -> dict[str, dict]:  # fmt: skip
    """Per finding ({finding: (y, scores)}): the threshold the rule picks (or the finding's `own` (rule, target))
    and the confusion there with the rule used, or {"undefined": why} where it cannot pick one."""
    out = {}
    for finding, (y, s) in y_by_finding.items():
        r, t = (own or {}).get(finding, (rule, target))
        try:
            threshold = curves.choose_threshold(y, s, r, t)
        except ValueError as exc:
            out[finding] = {"undefined": str(exc), "rule": r, "target": t}
            continue
        out[finding] = curves.confusion(y, s, threshold) | {"rule": r, "target": t}
    return out


PROPOSAL_COLUMNS = ("finding", "rule", "threshold", "TP", "FP", "FN", "TN", "sensitivity", "specificity", "PPV", "NPV",
                    "note")  # fmt: skip


def own_rules(edited: list[dict], rule: str, target: float | None) -> dict[str, tuple[str, float | None]]:
    """{finding: (rule, target)} of the rows of the "rule of its own" table that differ from the set's rule."""
    return {r["finding"]: (r["rule"], r["target"]) for r in edited if (r["rule"], r["target"]) != (rule, target)}


def proposal_rows(proposal: dict[str, dict]) -> list[dict]:
    """The proposal as the page's table (PROPOSAL_COLUMNS): the threshold each rule picks and the counts it
    gives, or why none (the default stays)."""
    rows = []
    for f, p in proposal.items():
        if "undefined" in p:
            rows.append(dict.fromkeys(PROPOSAL_COLUMNS, "") | {"finding": f, "note": p["undefined"] + " (the default stays)"})
        else:
            rows.append({"finding": f, "rule": RULE_NAMES[p["rule"]], "threshold": p["threshold"], "TP": p["tp"],
                         "FP": p["fp"], "FN": p["fn"], "TN": p["tn"], "sensitivity": p["sensitivity"],
                         "specificity": p["specificity"], "PPV": p["ppv"], "NPV": p["npv"], "note": ""})  # fmt: skip
    return rows


def chosen_thresholds(proposal: dict[str, dict]) -> dict[str, float]:
    """The thresholds a proposal saves: the findings where a rule could pick one."""
    return {f: p["threshold"] for f, p in proposal.items() if "undefined" not in p}


def rules_of(proposal: dict[str, dict], rule: str, target: float | None) -> tuple[str, dict | None]:
    """(the set's rule, each finding's rule where they differ): `rule`, or per_finding with the findings'."""
    used = {f: {"rule": p["rule"], "target": p["target"]} for f, p in proposal.items() if "undefined" not in p}
    if all((u["rule"], u["target"]) == (rule, target) for u in used.values()):
        return rule, None
    return "per_finding", used


def _check(spec: ModelSpec, thresholds: dict[str, float]) -> dict[str, float]:
    if spec.task != "classification":
        raise ThresholdSetRefused(f"{spec.ref} is a {spec.task} model: it has no thresholds")
    if unknown := sorted(set(thresholds) - set(spec.thresholds)):
        raise ThresholdSetRefused(f"{spec.ref} has no finding(s) {', '.join(unknown)}")
    bad = {k: v for k, v in thresholds.items() if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1)}
    if bad:
        raise ThresholdSetRefused(f"thresholds must lie between 0 and 1: {bad}")
    if not thresholds:
        raise ThresholdSetRefused("no threshold to save")
    return {k: float(v) for k, v in sorted(thresholds.items())}


def save_in(
    s, name: str, spec: ModelSpec, thresholds: dict[str, float], rule: str, user_id: int,
    target: float | None = None, eval_set_id: int | None = None, rules: dict | None = None,
) -> ThresholdSet:  # fmt: skip
    """Store the next version of `name` for this model version (inside the caller's transaction)."""
    name = name.strip()
    if not name:
        raise ThresholdSetRefused("give the threshold set a name")
    if rule not in RULE_NAMES:
        raise ThresholdSetRefused(f"unknown rule {rule!r}")
    values = _check(spec, thresholds)
    other = s.scalar(select(ThresholdSet).where(ThresholdSet.name == name).order_by(ThresholdSet.id.desc()).limit(1))
    if other is not None and (other.model_id, other.model_version) != (spec.model_id, spec.version):
        raise ThresholdSetRefused(f"{name} belongs to {other.model_id}@{other.model_version}; choose another name")
    version = (s.scalar(select(func.max(ThresholdSet.version)).where(ThresholdSet.name == name)) or 0) + 1
    row = ThresholdSet(name=name, version=version, model_id=spec.model_id, model_version=spec.version,
                       weights_sha256=spec.weights_sha256, thresholds=json.dumps(values), rule=rule, target=target,
                       rules=json.dumps(rules, sort_keys=True) if rules else None, eval_set_id=eval_set_id,
                       created_by_id=user_id)  # fmt: skip
    s.add(row)
    s.flush()
    audit.add(s, "threshold_set_saved", actor_id=user_id, target=f"{name} v{version}",
              details={"model": spec.ref, "rule": rule, "target": target, "eval_set_id": eval_set_id})  # fmt: skip
    return row


def save(
    ctx: Context, name: str, spec: ModelSpec, thresholds: dict[str, float], rule: str, user_id: int,
    target: float | None = None, eval_set_id: int | None = None, rules: dict | None = None,
) -> SetRow:  # fmt: skip
    def tx(s):
        return save_in(s, name, spec, thresholds, rule, user_id, target, eval_set_id, rules).id

    try:
        set_id = dbe.write(ctx.engine, tx)
    except IntegrityError:  # another request saved this name's next version meanwhile: number after it
        try:
            set_id = dbe.write(ctx.engine, tx)
        except IntegrityError as exc:
            raise ThresholdSetRefused(f"{name} was being saved by someone else at the same time: try again") from exc
    return get(ctx, set_id)


def get(ctx: Context, set_id: int) -> SetRow:
    with dbe.read(ctx.engine) as s:
        row = s.get(ThresholdSet, set_id)
        if row is None:
            raise LookupError(f"threshold set {set_id} does not exist")
        return _row(row, accounts.names(s))


def sets_of(ctx: Context, spec: ModelSpec | None = None) -> list[SetRow]:
    """Every threshold set (of one model version), newest first."""
    with dbe.read(ctx.engine) as s:
        q = select(ThresholdSet).order_by(ThresholdSet.id.desc())
        if spec is not None:
            q = q.where(ThresholdSet.model_id == spec.model_id, ThresholdSet.model_version == spec.version)
        names = accounts.names(s)
        return [_row(r, names) for r in s.scalars(q)]


def activate_in(s, spec: ModelSpec, set_id: int | None, user_id: int, *, rollback: bool = False) -> str:
    """Put a set (None: the defaults) in force for its version, inside the caller's transaction; its label."""
    label = DEFAULTS
    if set_id is not None:
        row = s.get(ThresholdSet, set_id)
        if row is None:
            raise ThresholdSetRefused(f"threshold set {set_id} does not exist")
        if (row.model_id, row.model_version) != (spec.model_id, spec.version):
            raise ThresholdSetRefused(f"{row.name} v{row.version} is for {row.model_id}@{row.model_version}, not {spec.ref}")
        if row.weights_sha256 and row.weights_sha256 != spec.weights_sha256:
            raise ThresholdSetRefused(f"{row.name} v{row.version} was chosen for other weights of {spec.ref}")
        label = f"{row.name} v{row.version}"
    s.add(ThresholdSetActivation(model_id=spec.model_id, model_version=spec.version, threshold_set_id=set_id,
                                 set_by_id=user_id, is_rollback=rollback))  # fmt: skip
    audit.add(s, "threshold_set_activated", actor_id=user_id, target=spec.ref,
              details={"set": label, "rollback": rollback})  # fmt: skip
    return label


def _admin(role: str) -> None:
    if role != "admin":
        raise ThresholdSetRefused("only an admin puts a threshold set in force")


def activate(ctx: Context, spec: ModelSpec, set_id: int | None, user_id: int, role: str) -> str:
    """An admin puts a set (None: the model's defaults) in force for its version; its label."""
    _admin(role)
    return dbe.write(ctx.engine, lambda s: activate_in(s, spec, set_id, user_id))


def history(ctx: Context, spec: ModelSpec) -> list[Activation]:
    """Every activation for the version, newest first (the first is in force)."""
    with dbe.read(ctx.engine) as s:
        names = accounts.names(s)
        labels = {r.id: f"{r.name} v{r.version}" for r in s.scalars(select(ThresholdSet))}
        return [Activation(a.at, a.threshold_set_id, labels.get(a.threshold_set_id, DEFAULTS), names.get(a.set_by_id),
                           a.is_rollback) for a in _activations(s, spec)]  # fmt: skip


def _stack(activations: list[ThresholdSetActivation]) -> list[int | None]:
    """What a rollback can go back to, oldest first, the top in force: each activation puts its set on top, each
    rollback took the top off (so two rollbacks in a row go back two steps, not back and forth)."""
    stack: list[int | None] = []
    for a in sorted(activations, key=lambda a: a.id):
        if a.is_rollback:
            if stack:
                stack.pop()
        else:
            stack.append(a.threshold_set_id)
    return stack


def rollback(ctx: Context, spec: ModelSpec, user_id: int, role: str) -> str:
    """An admin puts back in force what was in force before the current activation (a new activation, marked
    a rollback; a second rollback goes one step further back, to the model's defaults at the start); its label."""
    _admin(role)

    def tx(s):
        stack = _stack(_activations(s, spec))
        if not stack:
            raise ThresholdSetRefused(f"nothing to roll back for {spec.ref}: every activation was rolled back")
        stack.pop()
        return activate_in(s, spec, stack[-1] if stack else None, user_id, rollback=True)

    return dbe.write(ctx.engine, tx)
