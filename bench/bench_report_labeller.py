"""The report labeller beside the keyword baseline on the OpenI reports (../shared/data/openi_reports): precision,
recall and F1 per finding against the hand-assigned MeSH terms, on the held-out and the tuning half, and the
labelling speed of both (reports/s, best of 3 passes over every report), measured in the same run.

    python bench/bench_report_labeller.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reports import evaluate, labeller, table  # noqa: E402

SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
CSV = SHARED / "data" / "openi_reports" / "reports.csv"


def _cell(score: dict) -> str:
    return " / ".join("  -  " if score[k] is None else f"{score[k]:.3f}" for k in ("precision", "recall", "f1"))


def _table(result: dict) -> None:
    print(f"\n{result['split']} half: {result['reports']} reports ({result['not_indexed']} not indexed, left out)")
    print(f"{'finding':<19} {'pos':>4}  {'labeller P / R / F1':<21}  {'keyword P / R / F1':<21}  uncertain as present F1")
    for f in labeller.COLUMNS:
        lab, kw = result["labeller"]["findings"][f], result["keyword"]["findings"][f]
        alt = result["labeller_uncertain_as_present"]["findings"][f]["f1"]
        print(f"{f:<19} {lab['n_positives']:>4}  {_cell(lab):<21}  {_cell(kw):<21}  {'-' if alt is None else f'{alt:.3f}'}")
    print(
        f"macro F1 over the {len(result['macro_over'])} findings with >= {result['min_positives']} positives: "
        f"labeller {result['labeller']['macro_f1']:.4f}, keyword {result['keyword']['macro_f1']:.4f}, "
        f"labeller with uncertain as present {result['labeller_uncertain_as_present']['macro_f1']:.4f}"
    )


def _rate(fn, rows: list[table.Row]) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for row in rows:
            fn(row.parts)
        best = min(best, time.perf_counter() - t0)
    return len(rows) / best


def main() -> None:
    if not CSV.is_file():
        sys.exit(f"no {CSV} (set CXR_REVIEW_SHARED_DIR)")
    items = list(table.read(CSV, "report_id", ["findings", "impression"], ["mesh_major"]))
    rows = [r for r in items if isinstance(r, table.Row)]
    print(f"{CSV}: {len(rows)} reports labelled, {len(items) - len(rows)} rows reported (empty text)")
    for split in ("heldout", "tuning"):
        _table(evaluate.evaluate(rows, "mesh_major", split))
    labelled = _rate(lambda parts: labeller.values(labeller.label_parts(parts)), rows)
    keyword = _rate(labeller.keyword_values, rows)
    print(f"\nspeed, one core: labeller {labelled:,.0f} reports/s, keyword {keyword:,.0f} reports/s "
          f"(the labeller takes {keyword / labelled:.1f}x the keyword matcher's time)")  # fmt: skip


if __name__ == "__main__":
    main()
