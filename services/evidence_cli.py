"""`cxr-review evidence segmentation|classification`: measure every version of a task side by side and write
the evidence file that picks the task's default version (services/model_evidence.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from inference.evidence import NON_INFERIORITY_MARGIN
from services import model_cli


def _specs(runner, task: str, refs: list[str] | None):
    if refs:
        specs = [model_cli._model_for(runner, ref, task) for ref in refs]
    else:
        from inference.registry import is_candidate

        specs = [s for s in runner.registry.specs()
                 if s.task == task and runner.registry.problem(s) is None and not is_candidate(s)]  # fmt: skip
    if not specs:
        from inference.training.data import DatasetError

        raise DatasetError(f"no usable {task} version to measure")
    return specs


def _out_root(args) -> Path:
    return args.out if args.out is not None else model_cli._models_dir() / "trained"


def _cmd(args) -> int:
    from services import model_evidence

    runner = model_cli._runner(args)
    command = "cxr-review " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.task == "segmentation":
        data = model_evidence.measure_segmentation(
            runner, _specs(runner, "segmentation", args.versions),
            (args.lung_images, args.lung_masks, args.frontal_from),
            (args.label_images, args.label_maps, args.val_of) if args.label_images else None,
            args.max_relative_time, command, args.limit, args.margin,
        )  # fmt: skip
    else:
        data = model_evidence.measure_classification(
            runner, _specs(runner, "classification", args.versions), args.images, args.labels, args.val_of,
            args.max_relative_time, command, args.margin,
        )  # fmt: skip
    path = model_evidence.write(data, _out_root(args))
    summary = {ref: {"primary": v["metrics"][data["rule"]["set"]][data["rule"]["metric"]],
                     "ms_per_image": v["ms_per_image"], "relative_time": v["relative_time"]} for ref, v in data["versions"].items()}  # fmt: skip
    print(json.dumps({"task": data["task"], "chosen": data["chosen"], "rule": data["rule"]["text"],
                      "versions": summary, "file": str(path)}
                     | ({"timing_warning": data["timing_warning"]} if "timing_warning" in data else {})), flush=True)  # fmt: skip
    return model_cli.EXIT_OK


def add_parsers(sub) -> None:
    ev = sub.add_parser("evidence", help="measure a task's versions side by side; the best within the viewer's "
                                         "time budget becomes the task's default")  # fmt: skip
    esub = ev.add_subparsers(dest="evidence_task", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--versions", nargs="+", metavar="ID@VERSION", help="default: every usable version")
        p.add_argument("--max-relative-time", type=float, default=2.0, metavar="X",
                       help="the viewer's budget: at most X times the time per image of the built-in version "
                            "(else the fastest) measured in the same run (default 2)")  # fmt: skip
        p.add_argument("--margin", type=float, default=NON_INFERIORITY_MARGIN, metavar="M",
                       help="non-inferiority margin: a version replaces the built-in only when the lower bound of its "
                            "paired 95%% interval against it is at least -M (default 0.01, as for promotion)")  # fmt: skip
        p.add_argument("--out", type=Path, metavar="ROOT",
                       help="write ROOT/evidence/<task>.json (default: <models dir>/trained; the shipped file "
                            "lives in assets/models)")  # fmt: skip
        p.add_argument("--device", choices=["auto", "cpu", "cuda"])

    seg = esub.add_parser("segmentation", help="lungs Dice on hand-drawn lung masks (the rule), Dice per class "
                                               "on label maps")  # fmt: skip
    seg.add_argument("--lung-images", type=Path, required=True)
    seg.add_argument("--lung-masks", type=Path, required=True, help="binary masks, white = lung, same stem")
    seg.add_argument("--frontal-from", type=Path, metavar="CSV",
                     help="keep only the frontal films of this metadata CSV (columns file, view)")  # fmt: skip
    seg.add_argument("--label-images", type=Path)
    seg.add_argument("--label-maps", type=Path)
    seg.add_argument("--val-of", metavar="ID@VERSION", help="keep only that version's validation label maps")
    seg.add_argument("--limit", type=int, metavar="N", help="at most N lung films (a fixed sample by name)")
    common(seg)
    seg.set_defaults(fn=model_cli.run, handler=_cmd, task="segmentation")

    cls = esub.add_parser("classification", help="mean AUC on the multi-finding validation images of a version")
    cls.add_argument("--images", type=Path, required=True)
    cls.add_argument("--labels", type=Path, required=True)
    cls.add_argument("--val-of", metavar="ID@VERSION", required=True)
    common(cls)
    cls.set_defaults(fn=model_cli.run, handler=_cmd, task="classification")
