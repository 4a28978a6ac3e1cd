"""Test helpers shared by service and browser tests: an evaluation set of shared NIH images with a finished run."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

from services import eval_runs, eval_sets


def nih_set(ctx, nih: Path, keep: Callable[[int, dict], bool], csv_path: Path, name: str) -> eval_sets.SetInfo:
    """A folder set of the NIH images whose labels.csv rows `keep(index, row)` accepts, its CSV at csv_path."""
    with open(nih / "labels.csv", newline="") as fh:
        rows = [r for i, r in enumerate(csv.DictReader(fh)) if keep(i, r)]
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return eval_sets.from_folder(ctx, name, nih / "images", csv_path, 1).info


def run_and_wait(ctx, runner, set_id: int, ref: str, timeout_s: float = 300) -> eval_runs.RunInfo:
    """Run one version on the set in the background worker, as the page does, and wait until it ends."""
    [run_id] = eval_runs.start(ctx, runner, set_id, [ref], 1)
    deadline = time.monotonic() + timeout_s
    while (run := eval_runs.get(ctx, run_id)).status not in ("done", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} did not finish"
        time.sleep(0.2)
    return run
