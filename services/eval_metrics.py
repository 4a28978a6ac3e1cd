"""What the Evaluation pages show for a model version on an evaluation set, from the stored results of its runs:
per finding ROC and PR curves with 95% bootstrap bands, AUC and AP with intervals, calibration (reliability
bins, ECE, Brier), the operating point in force, subgroups (sex, age band, view, source) with intervals and a
flag where groups' intervals do not overlap, and two versions side by side with the paired AUC difference.

Only images with a result and a label for the finding count. Where a figure is not defined (no positives or no
negatives) it says why instead of a number."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

import numpy as np

from inference import curves, metrics
from inference.types import RESEARCH_USE, ModelSpec
from services import eval_runs, eval_sets, threshold_sets
from services.context import Context

AGE_BANDS = ((0, 18, "<18"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
MIN_GROUP = 5  # a subgroup needs this many labelled images before its AUC is shown


@dataclass
class Scored:
    """One version's scores on a set, lined up with the set's items and labels."""

    spec: ModelSpec
    items: list[eval_sets.Item]
    findings: list[str]  # the set's findings the model scores
    scores: np.ndarray  # N x len(findings)
    has: np.ndarray  # N: a stored result exists

    def labelled(self, finding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, y, s) of the images with a result and a label for the finding."""
        j = self.findings.index(finding)
        idx = np.array([i for i, it in enumerate(self.items) if self.has[i] and it.labels.get(finding) is not None],
                       dtype=int)  # fmt: skip
        y = np.array([bool(self.items[i].labels[finding]) for i in idx], dtype=bool)
        return idx, y, self.scores[idx, j] if idx.size else np.array([])


def labelled_by_finding(sc: Scored) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{finding: (y, scores)} of the images with a result and a label for it (what the threshold rules read)."""
    return {f: sc.labelled(f)[1:] for f in sc.findings}


def scored(ctx: Context, registry, set_id: int, ref: str) -> Scored:
    spec = registry.resolve(ref)
    info = eval_sets.get(ctx, set_id)
    items = eval_sets.items(ctx, set_id)
    findings = [f for f in info.findings if f in spec.labels]
    raw, has = eval_runs.scores(ctx, spec, items)
    cols = [spec.labels.index(f) for f in findings]
    return Scored(spec, items, findings, raw[:, cols], has)


def finding_report(sc: Scored, finding: str, threshold: float | None, n_boot: int = 1000) -> dict:
    """Everything the finding's page shows; "undefined" holds the reason where curves cannot be drawn."""
    _, y, s = sc.labelled(finding)
    out: dict = {"finding": finding, "n": int(y.size), "n_pos": int(y.sum()), "n_neg": int((~y).sum()),
                 "threshold": threshold, "undefined": curves.undefined_reason(y)}  # fmt: skip
    if y.size:
        out["brier"] = metrics.brier(y, s)
        out["calibration"] = curves.calibration_bins(y, s)
        if threshold is not None:
            out["operating_point"] = curves.confusion(y, s, threshold)
    if out["undefined"] is None:
        out |= curves.bootstrap_curves(y, s, n_boot=n_boot)
    return out


def summary_rows(sc: Scored, thresholds: dict[str, float], n_boot: int = 1000) -> list[dict]:
    """One row per finding: counts, AUC and AP with intervals (or why not defined), Brier, ECE and the
    operating point in force."""
    rows = []
    for f in sc.findings:
        r = finding_report(sc, f, thresholds.get(f), n_boot)
        op = r.get("operating_point", {})
        rows.append({
            "finding": f, "images": r["n"], "positives": r["n_pos"],
            "AUC": _fmt(r.get("auc"), r.get("auc_ci95"), r["undefined"]),
            "AP": _fmt(r.get("ap"), r.get("ap_ci95"), r["undefined"]),
            "Brier": r.get("brier"), "ECE": r.get("calibration", {}).get("ece"), "threshold": r["threshold"],
            **{k: op.get(k.lower()) for k in ("Sensitivity", "Specificity", "PPV", "NPV")},
        })  # fmt: skip
    return rows


def _fmt(value: float | None, ci: list[float] | None, undefined: str | None) -> str:
    if undefined is not None:
        return f"not defined: {undefined}"
    lo, hi = ci if ci else (float("nan"), float("nan"))
    return f"{value:.3f} [{lo:.3f}–{hi:.3f}]"


def group_of(item: eval_sets.Item, by: str) -> str | None:
    """The item's group of `by` (sex | age band | view | source), or None where it does not record it."""
    if by == "sex":
        return {"M": "male", "F": "female"}.get(item.patient_sex or "")
    if by == "age band":
        age = item.patient_age_years
        return None if age is None else next(name for lo, hi, name in AGE_BANDS if lo <= age < hi)
    if by == "view":
        view = (item.view_position or "").upper()
        return view if view in ("PA", "AP") else None
    return item.source


def subgroups(sc: Scored, finding: str, by: str, n_boot: int = 1000) -> list[dict]:
    """AUC with its 95% interval per group of `by` (sex | age band | view | source); images without the value
    are left out. `gap`: this group's interval does not overlap another group's (a difference wider than the
    intervals)."""
    idx, y, s = sc.labelled(finding)
    groups: dict[str, list[int]] = {}
    for k, i in enumerate(idx):
        if (g := group_of(sc.items[i], by)) is not None:
            groups.setdefault(g, []).append(k)
    rows = []
    for g, members in sorted(groups.items()):
        yg, sg = y[members], s[members]
        reason = curves.undefined_reason(yg) or (f"fewer than {MIN_GROUP} images" if len(members) < MIN_GROUP else None)
        row = {"group": g, "images": len(members), "positives": int(yg.sum()), "auc": None, "ci95": None,
               "note": reason, "gap": False}  # fmt: skip
        if reason is None:
            row["auc"] = metrics.roc_auc(yg, sg)
            row["ci95"] = list(metrics.bootstrap_auc_ci(yg, sg, n_boot=n_boot))
        rows.append(row)
    shown = [r for r in rows if r["ci95"] is not None]
    for r in shown:
        r["gap"] = any(o is not r and (o["ci95"][0] > r["ci95"][1] or o["ci95"][1] < r["ci95"][0]) for o in shown)
    return rows


def compare(a: Scored, b: Scored, finding: str, n_boot: int = 1000) -> dict:
    """A minus B on the images both scored and labelled for the finding: each AUC and the paired difference
    with its 95% interval (images resampled with the pairing kept)."""
    ia, y, sa = a.labelled(finding)
    jb = b.findings.index(finding)
    keep = b.has[ia]
    ia, y, sa = ia[keep], y[keep], sa[keep]
    sb = b.scores[ia, jb]
    out = {"finding": finding, "n": int(y.size), "n_pos": int(y.sum()), "undefined": curves.undefined_reason(y),
           "model_a": a.spec.provenance(), "model_b": b.spec.provenance()}  # fmt: skip
    if out["undefined"] is None:
        out |= metrics.paired_bootstrap_mean_auc_diff(y[:, None], sa[:, None], sb[:, None], n_boot=n_boot)
    return out


def reliability_rows(report: dict) -> list[dict]:
    """The reliability bins of a finding's report as rows (the table and its CSV)."""
    cal = report["calibration"]
    return [{"mean_predicted": p, "observed_rate": t, "images": c}
            for p, t, c in zip(cal["prob_pred"], cal["prob_true"], cal["counts"], strict=True)]  # fmt: skip


def subgroup_rows(groups: list[dict]) -> list[dict]:
    """`subgroups` as the table and its CSV: AUC with its interval, or why it is not shown."""
    return [{"group": g["group"], "images": g["images"], "positives": g["positives"],
             "AUC": "not defined: " + g["note"] if g["auc"] is None
             else f"{g['auc']:.3f} [{g['ci95'][0]:.3f}–{g['ci95'][1]:.3f}]",
             "gap": "wider than the intervals" if g["gap"] else ""} for g in groups]  # fmt: skip


def comparison_rows(compared: list[dict], ref: str, other: str) -> list[dict]:
    """`compare` per finding as the table and its CSV: both AUCs (None where not defined) and the paired
    difference with its interval, or why it is not defined."""
    return [{"finding": r["finding"], "images": r["n"], "positives": r["n_pos"],
             f"AUC {ref}": r.get("a") if isinstance(r.get("a"), float) else None,
             f"AUC {other}": r.get("b") if isinstance(r.get("b"), float) else None,
             "difference [95%]": "not defined: " + r["undefined"] if r["undefined"]
             else f"{r['difference']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"} for r in compared]  # fmt: skip


def thresholds_for(ctx: Context, spec: ModelSpec) -> threshold_sets.InForce:
    """The operating points in force for the version (its active threshold set, else its defaults)."""
    return threshold_sets.in_force(ctx, spec)


def provenance(specs: list[ModelSpec], info: eval_sets.SetInfo) -> list[str]:
    """What every download says about where its numbers come from: research use, each model version (id,
    version, weights sha256) and the evaluation set (name, version, content sha256)."""
    lines = [RESEARCH_USE]
    lines += [f"model {sp.model_id} version {sp.version} weights sha256 {sp.weights_sha256}" for sp in specs]
    lines.append(f"evaluation set {info.name} v{info.version} content sha256 {info.content_sha256}")
    return lines


def csv_bytes(rows: list[dict], provenance: list[str]) -> bytes:
    """Rows as CSV (the download beside each figure), after "# " comment lines with the provenance."""
    if not rows:
        return b""
    buf = io.StringIO()
    for line in provenance:
        buf.write(f"# {line}\n")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def file_name(what: str, specs: list[ModelSpec], info: eval_sets.SetInfo, suffix: str = "csv") -> str:
    """A download's name: what it is, each model id and version, the set's name and version."""
    parts = [what, *(f"{sp.model_id}-{sp.version}" for sp in specs), f"{info.name}-v{info.version}"]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)) + f".{suffix}"


def curve_rows(report: dict, which: str) -> list[dict]:
    """A finding's ROC or PR curve and its band as rows for CSV: the curve's points, then the band on GRID."""
    if report.get("undefined") is not None:
        return []
    if which == "roc":
        pts = [{"part": "curve", "fpr": x, "tpr": y, "lo": None, "hi": None}
               for x, y in zip(report["roc"]["fpr"], report["roc"]["tpr"], strict=True)]  # fmt: skip
        band = report["roc_band"]
        return pts + [{"part": "band", "fpr": g, "tpr": None, "lo": lo, "hi": hi}
                      for g, lo, hi in zip(report["grid"], band["lo"], band["hi"], strict=True)]  # fmt: skip
    pts = [{"part": "curve", "recall": x, "precision": y, "lo": None, "hi": None}
           for x, y in zip(report["pr"]["recall"], report["pr"]["precision"], strict=True)]  # fmt: skip
    band = report["pr_band"]
    return pts + [{"part": "band", "recall": g, "precision": None, "lo": lo, "hi": hi}
                  for g, lo, hi in zip(report["grid"], band["lo"], band["hi"], strict=True)]  # fmt: skip
