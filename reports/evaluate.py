"""Scoring the labeller against hand-assigned MeSH terms (OpenI's `mesh_major`), beside the keyword baseline.

Reports are split in two halves by a hash of their id, so the split never changes: the rules were tuned by
reading the errors of the tuning half only, and the held-out half measures them. A report the annotators did
not index ("No Indexing", or no terms at all) has no reference and is left out.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from reports import labeller
from reports.labeller import FINDINGS, NO_FINDING, PRESENT, UNCERTAIN
from reports.table import Row

SPLITS = ("tuning", "heldout", "all")
MIN_POSITIVES = 10  # findings with fewer positives in the split are scored but left out of the macro F1


def split_of(report_id: str) -> str:
    """ "tuning" or "heldout", from the id alone (the first 8 bytes of its sha256, even or odd)."""
    return (
        "heldout" if int.from_bytes(hashlib.sha256(report_id.encode()).digest()[:8], "big") % 2 else "tuning"
    )


@dataclass(frozen=True)
class _MeshRule:
    finding: str
    heading: str
    qualifiers: frozenset[str]


@cache
def _mesh_rules() -> tuple[_MeshRule, ...]:
    data = tomllib.loads(
        resources.files("reports").joinpath("data", "mesh_map.toml").read_text(encoding="utf-8")
    )
    return tuple(
        _MeshRule(m["finding"], m["heading"].lower(), frozenset(q.lower() for q in m.get("qualifiers", [])))
        for m in data["map"]
    )


def is_indexed(mesh: str) -> bool:
    terms = [t.strip().lower() for t in mesh.split("|") if t.strip()]
    return bool(terms) and "no indexing" not in terms


def mesh_findings(mesh: str) -> set[str]:
    """The findings (and "No Finding" for `normal`) that a `|`-separated list of MeSH terms names."""
    found = set()
    for term in mesh.split("|"):
        heading, *qualifiers = (" ".join(p.split()).lower() for p in term.split("/"))
        for rule in _mesh_rules():
            if heading == rule.heading and (not rule.qualifiers or rule.qualifiers & set(qualifiers)):
                found.add(rule.finding)
    return found


def _counts(truth: list[set[str]], predicted: list[set[str]], finding: str) -> dict:
    tp = sum(finding in t and finding in p for t, p in zip(truth, predicted, strict=True))
    fp = sum(finding not in t and finding in p for t, p in zip(truth, predicted, strict=True))
    fn = sum(finding in t and finding not in p for t, p in zip(truth, predicted, strict=True))
    return {
        "n_positives": tp + fn,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _positive(row: dict[str, int | None], uncertain_positive: bool) -> set[str]:
    counted = {PRESENT, UNCERTAIN} if uncertain_positive else {PRESENT}
    return {f for f, v in row.items() if v in counted}


def macro_f1(scores: dict[str, dict]) -> tuple[float | None, list[str]]:
    """Mean F1 over the findings (not "No Finding") with at least MIN_POSITIVES positives, and their names."""
    kept = [f for f in FINDINGS if scores[f]["n_positives"] >= MIN_POSITIVES]
    if not kept:
        return None, []
    return round(sum(scores[f]["f1"] or 0.0 for f in kept) / len(kept), 4), kept


def evaluate(rows: Iterable[Row], mesh_column: str, split: str = "heldout") -> dict:
    """Per finding precision / recall / F1 against the MeSH terms, on the reports of `split`, JSON-ready:
    `labeller` counts an uncertain label (-1) as absent, `labeller_uncertain_as_present` as present, and
    `keyword` is the baseline. An uncertain label counts as absent by default because the annotators index
    what a report asserts: of the tuning half's uncertain labels ("may represent atelectasis", "cannot
    exclude pneumonia") nearly all carry no MeSH term for the finding."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    truth, labelled, keyword = [], [], []
    not_indexed = 0
    for row in rows:
        if split != "all" and split_of(row.id) != split:
            continue
        if not is_indexed(row.other[mesh_column]):
            not_indexed += 1
            continue
        truth.append(mesh_findings(row.other[mesh_column]))
        labelled.append(labeller.values(labeller.label_parts(row.parts)))
        keyword.append(labeller.keyword_values(row.parts))
    systems = {
        "labeller": [_positive(r, uncertain_positive=False) for r in labelled],
        "labeller_uncertain_as_present": [_positive(r, uncertain_positive=True) for r in labelled],
        "keyword": [_positive(r, uncertain_positive=True) for r in keyword],
    }
    result: dict = {"split": split, "reports": len(truth), "not_indexed": not_indexed,
                    "min_positives": MIN_POSITIVES}  # fmt: skip
    for name, predicted in systems.items():
        scores = {f: _counts(truth, predicted, f) for f in (*FINDINGS, NO_FINDING)}
        macro, kept = macro_f1(scores)
        result[name] = {"macro_f1": macro, "findings": scores}
    result["macro_over"] = kept  # the same findings for every system: positives come from the reference
    return result
