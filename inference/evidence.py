"""Which version of a task runs by default, and the measurements that decided it.

`<root>/evidence/<task>.json` (written by `cxr-review model evidence`) holds, for every version measured, its
figures on images none of the versions trained on, measured side by side in one run, and its time per image on
the machine that measured it. The rule in the file picks the default: the highest mean of the primary metric
among the versions whose time per image fits the viewer's budget (see below). A measurement counts only while the
version still has the weights it was measured with.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

EVIDENCE_DIR = "evidence"
# How much worse than the reference a version may be, at the lower bound of its paired 95% interval, and still
# replace it: the same for a default chosen on evidence and for a candidate promoted from corrections.
NON_INFERIORITY_MARGIN = 0.01


class EvidenceError(ValueError):
    """An evidence file that cannot be used, with the reason."""


def path_for(root: Path, task: str) -> Path:
    return Path(root) / EVIDENCE_DIR / f"{task}.json"


def read(roots: list[Path], task: str) -> dict | None:
    """The most recently measured readable evidence file of the task among the roots (an installation's own
    measurement in <models dir>/trained beside the one shipped in assets/models); None when there is none."""
    found = []
    for root in roots:
        path = path_for(root, task)
        try:
            st = path.stat()
        except OSError:
            continue
        data = _load(str(path), st.st_mtime_ns, st.st_size)
        if data is not None:
            found.append(data)
    return max(found, key=lambda d: str(d.get("measured", ""))) if found else None


@lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int, size: int) -> dict | None:
    """Parsed and checked once per version of the file: the registry asks on every analysis."""
    try:
        data = json.loads(Path(path).read_text())
        check(data)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        log.warning("evidence file %s ignored: %s", path, exc)
        return None
    return data


def check(data: dict) -> None:
    if not isinstance(data, dict):
        raise EvidenceError("not a JSON object")
    rule = data.get("rule")
    if not isinstance(rule, dict) or not {"set", "metric", "max_relative_time"} <= set(rule):
        raise EvidenceError("needs a rule with set, metric and max_relative_time")
    if not isinstance(data.get("versions"), dict):
        raise EvidenceError("needs versions")
    float(rule["max_relative_time"])
    if (tie := rule.get("tie_break")) is not None:
        if not isinstance(tie, dict) or not isinstance(tie.get("metric"), str) or not isinstance(tie.get("decimals"), int):
            raise EvidenceError("tie_break needs a metric name and an integer number of decimals")
    for ref, entry in data["versions"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics", {}), dict):
            raise EvidenceError(f"version {ref}: not an object with metrics")
        value = entry.get("metrics", {}).get(rule["set"], {}).get(rule["metric"])
        if value is not None and not isinstance(value.get("mean"), int | float):
            raise EvidenceError(f"version {ref}: {rule['metric']} has no numeric mean")
        if "relative_time" in entry and not isinstance(entry["relative_time"], int | float):
            raise EvidenceError(f"version {ref}: relative_time is not a number")


def primary(entry: dict, rule: dict) -> float | None:
    """The version's mean of the rule's metric on the rule's set (None when not measured there)."""
    m = (entry.get("metrics") or {}).get(rule["set"], {}).get(rule["metric"])
    return None if m is None else float(m["mean"])


def not_inferior(ref: str, entry: dict, rule: dict) -> bool:
    """With a non-inferiority margin in the rule, a version other than the reference qualifies only when the
    lower bound of its paired difference from the reference (`vs_reference`, on the rule's metric and set) is
    at least -margin: a default is not replaced by a version that may well be worse."""
    margin = rule.get("non_inferiority_margin")
    if margin is None or ref == rule.get("time_reference"):
        return True
    ci = (entry.get("vs_reference") or {}).get("ci95")
    return bool(ci) and float(ci[0]) >= -float(margin)


def tie_break(entry: dict, rule: dict) -> float:
    """The rule's tie-break figure of a version (lower is better; infinity when the rule has none or the
    version was not measured on it): with a tie-break, primary metrics equal to its `decimals` are ordered by
    it, e.g. two classifiers that rank images alike (one a calibrated copy of the other) by calibration error."""
    tie = rule.get("tie_break")
    m = (entry.get("metrics") or {}).get(rule["set"], {}).get(tie["metric"]) if tie else None
    return float("inf") if m is None or m.get("mean") is None else float(m["mean"])


def ranking(data: dict, current_sha256: dict[str, str]) -> list[str]:
    """Refs in the order the rule prefers them: versions within the budget and not inferior to the reference
    by the primary metric (best first; equal ones by the rule's tie-break), then the others. Versions whose
    weights differ from the measured ones are left out."""
    rule = data["rule"]
    budget = float(rule["max_relative_time"])
    tie = rule.get("tie_break")
    rows = []
    for ref, entry in data["versions"].items():
        if current_sha256.get(ref) != entry.get("weights_sha256"):
            continue
        value = primary(entry, rule)
        if value is None:
            continue
        out = float(entry.get("relative_time", float("inf"))) > budget or not not_inferior(ref, entry, rule)
        rounded = round(value, int(tie["decimals"])) if tie else value
        rows.append((out, -rounded, tie_break(entry, rule), -value, ref))  # then the exact mean, then the name
    return [row[-1] for row in sorted(rows)]


def chosen(data: dict, current_sha256: dict[str, str]) -> str | None:
    order = ranking(data, current_sha256)
    return order[0] if order else None
