"""`cxr-review train ...` and `cxr-review eval ...`: the project's own model training and evaluation.

Training writes a model version folder (weights + model.json) under --out (default: <models_dir>/trained,
which the registry lists); evaluation prints one JSON object on stdout and, with --report DIR, writes the
same JSON and HTML plots there. Progress bars and per-epoch log lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2


def _models_dir():
    from services import settings

    return settings.load().models_dir


def _add_common_train(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="root of model versions; writes DIR/<model id>/<version>/ (default: <models dir>/trained)")  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--model-id", help="model id to write (default: the family name)")
    p.add_argument("--version", help="version to write (default: next free one under --out)")
    p.add_argument(
        "--max-minutes", type=float, help="stop after the epoch that passes this wall-clock budget"
    )
    p.add_argument("--limit", type=int, help="use only the first N images (smoke tests)")
    p.add_argument("--steps-per-epoch", type=int, help="cap on optimiser steps per epoch (smoke tests)")
    p.add_argument(
        "--keep-checkpoint", action="store_true", help="keep the fp32 best checkpoint beside the weights"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines per epoch only)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--from-task", metavar="TASK",
                   help="fine-tune from the final annotations of this labelling task too, starting from the active "
                   "version (or --init); a part of them, by patient, is held out (writes a candidate version)")  # fmt: skip
    p.add_argument("--holdout", type=float, default=0.3,
                   help="with --from-task: share of the task's patients held out of training (default 0.3)")  # fmt: skip
    p.add_argument("--shadow-eval", action="store_true",
                   help="with --from-task: shadow-evaluate the candidate at once (promoted only when not worse)")  # fmt: skip


def _overrides(args, names: list[str]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


_COMMON = ["epochs", "batch_size", "lr", "seed", "val_fraction", "model_id", "version", "max_minutes", "limit",
           "steps_per_epoch", "threads"]  # fmt: skip


def _summary(result: dict) -> dict:
    keep = ("model_id", "version", "task", "model_json", "weights_sha256", "weights_bytes", "parameters",
            "validation", "thresholds")  # fmt: skip
    out = {k: result[k] for k in keep if k in result}
    out["training"] = {
        k: result["training"].get(k) for k in ("best_epoch", "epochs_run", "wall_seconds", "device")
    }
    return out


def _cmd_train_segmentation(args) -> int:
    from inference.training.segmentation import train

    if args.from_task:
        return _from_task(args, "segmentation")
    if args.shadow_eval:
        raise _dataset_error("--shadow-eval evaluates a version trained --from-task: give the task")
    print(json.dumps(_summary(train(_segmentation_config(args), getattr(args, "argv", None)))), flush=True)
    return EXIT_OK


def _segmentation_config(args):
    from inference.training.segmentation import SegmentationConfig

    return SegmentationConfig(
        images=args.images, masks=args.masks, out=args.out or _models_dir() / "trained", device=args.device,
        keep_checkpoint=args.keep_checkpoint, progress=not args.no_progress, models_dir=_models_dir(),
        **_overrides(args, [*_COMMON, "size", "encoder", "init", "tta", "swa_from", "dice_per_image"]),
        **({"stretch": tuple(args.stretch)} if args.stretch else {}),
        **({"decoder_channels": tuple(args.decoder_channels)} if args.decoder_channels else {}),
    )  # fmt: skip


def _cli_user_id(ctx) -> int | None:
    from db import engine as dbe
    from services.annotation_cli import _cli_admin

    with dbe.read(ctx.engine) as s:
        admin = _cli_admin(s)
    return None if admin is None else admin.user_id


def _from_task(args, kind: str) -> int:
    """`train ... --from-task T`: fine-tune from the task's final annotations (services/shadow.py)."""
    from services import context, shadow

    ctx = context.build()
    runner = _runner(args)
    cfg = _classification_config(args) if kind == "classification" else _segmentation_config(args)
    meta = shadow.train_from_task(ctx, runner.registry, cfg, kind, args.from_task, init=args.init,
                                  shared_limit=args.limit, holdout=args.holdout, argv=getattr(args, "argv", None))  # fmt: skip
    out = _summary(meta) | {"from_task": {k: meta["from_task"][k] for k in ("task", "trained_on", "held_out")},
                            "parent": meta["parent"]}  # fmt: skip
    if args.shadow_eval:
        out["shadow_evaluation"] = shadow.shadow_evaluate(
            ctx, _runner(args), f"{meta['model_id']}@{meta['version']}", _cli_user_id(ctx), seed=args.seed)
    print(json.dumps(out), flush=True)
    return EXIT_OK


def _cmd_shadow_eval(args) -> int:
    from services import context, shadow

    ctx = context.build()
    record = shadow.shadow_evaluate(ctx, _runner(args), args.candidate, _cli_user_id(ctx), n_boot=args.bootstrap,
                                    seed=args.seed, standard_limit=args.standard_limit, promote=not args.no_promote)  # fmt: skip
    print(json.dumps(record), flush=True)
    return EXIT_OK


def _cmd_train_classification(args) -> int:
    from inference.training.classification import cross_validate, train

    teacher_only = [f"--{k.replace('_', '-')}" for k in ("test_fraction", "teacher_weight", "folds", "views",
                                                          "sensitivity", "against", "cache", "l2")
                    if getattr(args, k, None) is not None]  # fmt: skip
    if teacher_only and not args.teacher:  # else they would be dropped without a word
        raise _dataset_error(f"{', '.join(teacher_only)} need --teacher (distillation)")
    if args.from_task:
        if args.cv:
            raise _dataset_error("--from-task and --cv do not go together")
        return _from_task(args, "classification")
    if args.shadow_eval:
        raise _dataset_error("--shadow-eval evaluates a version trained --from-task: give the task")
    if args.teacher:
        return _cmd_distil(args)
    if args.cv:  # fold versions are scratch: they go to --out, else to a temporary folder
        scratch = (
            contextlib.nullcontext(args.out)
            if args.out
            else tempfile.TemporaryDirectory(prefix="cxr-review-cv-")
        )
        with scratch as out:
            cfg = _classification_config(args, out=Path(out))
            print(json.dumps(cross_validate(cfg, args.cv, getattr(args, "argv", None))), flush=True)
        return EXIT_OK
    print(json.dumps(_summary(train(_classification_config(args), getattr(args, "argv", None)))), flush=True)
    return EXIT_OK


def _cmd_distil(args) -> int:
    from inference.training.data import DatasetError
    from inference.training.distillation import DistillConfig, distil

    if args.cv or args.head or args.no_calibrate or args.epochs or args.batch_size or args.lr:
        raise DatasetError("--teacher cross-validates itself (--folds K), fits the last layer by L-BFGS (--l2) and "
                           "always calibrates: drop --cv, --head, --no-calibrate, --epochs, --batch-size and --lr")  # fmt: skip
    cfg = DistillConfig(
        images=args.images, labels=args.labels, teacher=args.teacher, out=args.out or _models_dir() / "trained",
        models_dir=_models_dir(), progress=not args.no_progress,
        **_overrides(args, ["seed", "model_id", "version", "limit", "threads", "init", "teacher_weight", "folds",
                            "views", "sensitivity", "against", "cache", "l2", "test_fraction"]),
    )  # fmt: skip
    result = distil(cfg, getattr(args, "argv", None))
    summary = _summary(result) | {"thresholds_rule": result["thresholds_rule"]}
    cv = result["validation"]["cross_validation"]
    summary["validation"] = {part: cv[part]["mean_auc"] | {"n_images": cv[part]["n_images"]} for part in cv}
    summary["validation"]["reliability_mean"] = result["validation"]["reliability"]["mean"]
    summary["validation"]["runner_check"] = result["validation"]["runner_check"]
    if against := result["validation"]["against"]:
        summary["validation"]["against"] = against
    if held := result["validation"].get("held_out"):
        summary["validation"]["held_out"] = {k: held[k] for k in ("n_images", "all", "multi_finding", "reliability_mean")}
    print(json.dumps(summary), flush=True)
    return EXIT_OK


def _cmd_train_calibration(args) -> int:
    from inference.training.recalibration import CalibrateConfig, calibrate

    cfg = CalibrateConfig(
        images=args.images, labels=args.labels, out=args.out or _models_dir() / "trained", models_dir=_models_dir(),
        **_overrides(args, ["of", "teacher", "test_fraction", "folds", "sensitivity", "seed", "model_id", "version",
                            "limit", "threads"]),
    )  # fmt: skip
    result = calibrate(cfg, getattr(args, "argv", None))
    validation = result["validation"]
    summary = {k: result[k] for k in ("model_id", "version", "task", "model_json", "weights_of", "weights_sha256",
                                      "thresholds", "thresholds_rule")}  # fmt: skip
    summary["validation"] = {"reliability_mean": validation["reliability"]["mean"],
                             "runner_check": validation["runner_check"]}  # fmt: skip
    if held := validation.get("held_out"):
        summary["validation"]["held_out"] = {k: held[k] for k in ("n_images", "all", "multi_finding", "reliability_mean")}
    print(json.dumps(summary), flush=True)
    return EXIT_OK


def _cmd_train_gate(args) -> int:
    from services import gate_training

    if not (Path(args.shared) / "nih" / "labels.csv").is_file():
        print(f"cxr-review: error: {args.shared} holds no nih/labels.csv (the shared data folder?)", file=sys.stderr)
        return EXIT_USAGE
    if args.cv:
        print(json.dumps(gate_training.cross_validate(args)))
        return EXIT_OK
    meta = gate_training.run(args)
    print(json.dumps({k: meta[k] for k in ("model_id", "version", "weights_sha256", "model_json", "validation")}))
    return EXIT_OK


def _dataset_error(message: str):
    from inference.training.data import DatasetError

    return DatasetError(message)


def _classification_config(args, out: Path | None = None):
    from inference.training.classification import ClassificationConfig

    return ClassificationConfig(
        images=args.images, labels=args.labels, out=out or args.out or _models_dir() / "trained", device=args.device,
        keep_checkpoint=args.keep_checkpoint, progress=not args.no_progress, models_dir=_models_dir(),
        **_overrides(args, [*_COMMON, "init", "head", "head_epochs", "pos_weight_max"]),
        calibrate=not args.no_calibrate,
    )  # fmt: skip


def _runner(args):
    from inference.registry import Registry
    from inference.runner import Runner
    from services import settings

    s = settings.load()
    return Runner(Registry(s.models_dir), args.device or s.device)


def _val_files(runner, ref: str | None) -> set[str] | None:
    """The validation file names a trained version recorded in its model.json (--val-of)."""
    if ref is None:
        return None
    from services.model_evidence import recorded_val_files

    return recorded_val_files(runner, ref)


_EVAL_NEEDS = {"segmentation": "segmentation", "ctr": "segmentation", "classification": "classification",
               "bone": "bone_suppression"}  # fmt: skip


def _model_for(runner, ref: str, eval_task: str):
    """The spec of `ref`, refused up front when it is a model of another task (instead of failing mid-run)."""
    spec = runner.registry.resolve(ref)
    if spec.task != _EVAL_NEEDS[eval_task]:
        from inference.training.data import DatasetError

        raise DatasetError(
            f"{spec.ref} is a {spec.task} model; eval {eval_task} needs a {_EVAL_NEEDS[eval_task]} model"
        )
    return spec


def _emit(report: dict, args, cases: list[dict] | None = None) -> int:
    if args.report:
        from services import eval_report

        report["report_files"] = [str(p) for p in eval_report.write(report, args.report, cases)]
    print(json.dumps(report), flush=True)
    return EXIT_OK


def _cmd_eval(args) -> int:
    from inference import evaluation
    from inference.training.data import paired_files, read_labels_csv

    runner = _runner(args)
    keep, cases = _val_files(runner, args.val_of), None
    progress = not args.no_progress
    model = _model_for(runner, args.model, args.eval_task)
    against = _model_for(runner, args.against, args.eval_task) if getattr(args, "against", None) else None
    if args.eval_task == "segmentation":
        pairs = [p for p in paired_files(args.images, args.masks) if keep is None or p[0].name in keep]
        report = evaluation.evaluate_segmentation(runner, model, pairs,
                                                  progress=progress, n_boot=args.bootstrap, seed=args.seed,
                                                  against=against)  # fmt: skip
        if args.report and args.worst > 0:
            specs = [model] if against is None else [model, against]
            cases = evaluation.lowest_dice_cases(runner, specs, pairs, report, args.worst)
            report["lowest_dice"] = {c["class"]: [x["file"] for x in c["cases"]] for c in cases}
    elif args.eval_task in ("classification", "ctr"):
        rows = [r for r in read_labels_csv(args.labels, args.images) if keep is None or r.file in keep]
        if args.eval_task == "classification":
            report = evaluation.evaluate_classification(runner, model, args.images, rows, n_boot=args.bootstrap,
                                                        seed=args.seed, progress=progress, against=against,
                                                        hardest=args.hardest)  # fmt: skip
        else:
            report = evaluation.evaluate_ctr(runner, model, args.images, rows, n_boot=args.bootstrap,
                                             seed=args.seed, progress=progress, against=against)  # fmt: skip
    else:
        pairs = evaluation.bone_pairs(args.pairs)
        report = evaluation.evaluate_bone(runner, model, pairs)
    if args.val_of:
        report["subset"] = f"validation files of {args.val_of}"
    return _emit(report, args, cases)


def add_parsers(sub) -> None:
    """Add `train` and `eval` to the cxr-review subparsers."""
    train = sub.add_parser("train", help="train a model version (writes weights + model.json)")
    tsub = train.add_subparsers(dest="train_task", required=True)

    seg = tsub.add_parser("segmentation", help="smp U-Net anatomy model (lungs, heart, clavicles)")
    seg.add_argument("--images", required=True, type=Path, metavar="DIR")
    seg.add_argument("--masks", required=True, type=Path, metavar="DIR",
                     help="label maps of the same names: 0 background, 1 lungs, 2 heart, 3 clavicles")  # fmt: skip
    _add_common_train(seg, epochs=60)
    seg.add_argument("--size", type=int, help="network input side in pixels (default 256)")
    seg.add_argument("--encoder", help="smp encoder name (default tu-mobilenetv3_large_100)")
    seg.add_argument("--decoder-channels", type=int, nargs="+", metavar="N")
    seg.add_argument("--init", metavar="MODEL_ID@VERSION",
                     help="warm start from a trained version of this family (its architecture is kept)")  # fmt: skip
    seg.add_argument("--tta", action="store_true", default=None,
                     help="the version averages 5 shifted/zoomed views at inference (slower, more accurate)")  # fmt: skip
    seg.add_argument("--stretch", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="stretch each image's LOW..HIGH percentiles to 0..1 (training and inference), "
                     "e.g. 0.5 99.5; without it, --init keeps the start's setting (its mean/std are kept either way)")  # fmt: skip
    seg.add_argument("--swa-from", type=int, metavar="EPOCH",
                     help="stochastic weight averaging: constant --lr, and the weights of every epoch from EPOCH "
                     "on are averaged (BatchNorm recomputed); the average competes for the checkpoint")  # fmt: skip
    seg.add_argument("--dice-per-image", action="store_true", default=None,
                     help="soft Dice loss per image (as the validation metric averages it) instead of per batch")  # fmt: skip
    seg.set_defaults(fn=run, handler=_cmd_train_segmentation)

    cls = tsub.add_parser("classification", help="multi-label NIH findings classifier (sigmoid per finding)")
    cls.add_argument("--images", required=True, type=Path, metavar="DIR")
    cls.add_argument("--labels", required=True, type=Path, metavar="CSV",
                     help="NIH Data_Entry-style CSV: Image Index, Finding Labels, Patient ID")  # fmt: skip
    cls.add_argument("--init", metavar="MODEL_ID[@VERSION]",
                     help="start from these weights (default cxr15_mobilenetv3; 'none' = from scratch)")  # fmt: skip
    cls.add_argument("--head", choices=["logsoftmax", "linear"],
                     help="multi-label head (default logsoftmax: starts ranking like the shipped softmax)")  # fmt: skip
    cls.add_argument("--head-epochs", type=int, help="epochs training the head only before fine-tuning all")
    cls.add_argument("--pos-weight-max", type=float, help="cap of the per-finding positive weight (neg/pos)")
    cls.add_argument("--cv", type=int, metavar="K",
                     help="instead of writing a version, cross-validate the recipe over K patient folds against "
                     "its starting weights (JSON report; fold versions go to --out or a temporary folder)")  # fmt: skip
    cls.add_argument("--no-calibrate", action="store_true",
                     help="store raw sigmoids instead of Platt-calibrated probabilities fitted on validation")  # fmt: skip
    cls.add_argument("--teacher", type=Path, metavar="CSV",
                     help="distil: a stronger model's probabilities per image ('Image Index' + one column per finding) "
                     "as soft targets beside the labels; cross-validates by patient, calibrates per finding out of "
                     "fold and writes a version (see README 'Distillation')")  # fmt: skip
    cls.add_argument("--teacher-weight", type=float, metavar="A",
                     help="with --teacher: loss = (1-A) BCE(labels) + A BCE(teacher) (default 0.8)")  # fmt: skip
    cls.add_argument("--folds", type=int, metavar="K", help="with --teacher: patient folds (default 5)")
    cls.add_argument("--views", type=int, metavar="N",
                     help="with --teacher: augmented copies per image whose features are cached (default 4)")  # fmt: skip
    cls.add_argument("--sensitivity", type=float, metavar="S",
                     help="with --teacher: thresholds flag at least this share of out-of-fold positives (default 0.9)")  # fmt: skip
    cls.add_argument("--against", metavar="ID@VERSION",
                     help="with --teacher: also compare, out of fold, with that version on its recorded validation images")  # fmt: skip
    cls.add_argument("--cache", type=Path, metavar="NPZ", help="with --teacher: keep the backbone features here")
    cls.add_argument("--l2", type=float, help="with --teacher: ridge penalty on the standardised features (default 0.03)")
    cls.add_argument("--test-fraction", type=float, metavar="F",
                     help="with --teacher: set this share of the patients aside before anything, record them as the "
                     "version's validation files and measure the version on them at the end (default 0)")  # fmt: skip
    _add_common_train(cls, epochs=None)  # None: each recipe's own default (12; with --teacher, DistillConfig's)
    cls.set_defaults(fn=run, handler=_cmd_train_classification)

    cal = tsub.add_parser("calibration", help="the shipped classifier with calibrated probabilities and thresholds "
                          "by a sensitivity rule (its weights unchanged, not copied)")  # fmt: skip
    cal.add_argument("--images", required=True, type=Path, metavar="DIR")
    cal.add_argument("--labels", required=True, type=Path, metavar="CSV",
                     help="NIH Data_Entry-style CSV: Image Index, Finding Labels, Patient ID")  # fmt: skip
    cal.add_argument("--of", default="cxr15_mobilenetv3@1.0.0", metavar="ID@VERSION",
                     help="the shipped classifier to calibrate (default cxr15_mobilenetv3@1.0.0)")  # fmt: skip
    cal.add_argument("--teacher", type=Path, metavar="CSV",
                     help="CheXNet's probabilities per image: set beside the held-out figures as their anchor")  # fmt: skip
    cal.add_argument("--test-fraction", type=float, default=0.0, metavar="F",
                     help="set this share of the patients aside before any fit and measure on them at the end "
                     "(the same patients as distillation's for the same --seed; default 0)")  # fmt: skip
    cal.add_argument("--folds", type=int, default=5, metavar="K",
                     help="patient folds for the cross-fitted reliability and sensitivity (default 5)")  # fmt: skip
    cal.add_argument("--sensitivity", type=float, default=0.9, metavar="S",
                     help="thresholds flag at least this share of the positives (default 0.9)")  # fmt: skip
    cal.add_argument("--out", type=Path, metavar="DIR",
                     help="root of model versions (default: <models dir>/trained; the project's: assets/models)")  # fmt: skip
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--model-id")
    cal.add_argument("--version")
    cal.add_argument("--limit", type=int, help="use only the first N images (smoke tests)")
    cal.add_argument("--threads", type=int)
    cal.set_defaults(fn=run, handler=_cmd_train_calibration)

    gate = tsub.add_parser("gate", help="quality gate: frontal chest radiograph or not (small CNN, CPU minutes)")
    gate.add_argument("--shared", required=True, type=Path, metavar="DIR",
                      help="the shared data folder (nih/, jsrt/, covid_followup/)")  # fmt: skip
    gate.add_argument("--out", type=Path, metavar="DIR", default=None,
                      help="root of model versions (default: <models dir>/trained; the project's: assets/models)")  # fmt: skip
    gate.add_argument("--epochs", type=int, default=20)
    gate.add_argument("--lr", type=float)
    gate.add_argument("--seed", type=int, default=0)
    gate.add_argument("--model-id")
    gate.add_argument("--version")
    gate.add_argument("--threads", type=int)
    gate.add_argument("--cache", type=Path, metavar="NPZ", help="keep the loaded pictures here between runs")
    gate.add_argument("--cv", type=int, metavar="K",
                      help="instead of writing a version, the recipe's figures out of fold over K groups of patients")  # fmt: skip
    gate.set_defaults(fn=run, handler=_cmd_train_gate)

    model = sub.add_parser("model", help="model versions").add_subparsers(dest="model_command", required=True)
    sh = model.add_parser("shadow-eval", help="compare a candidate trained from corrections with the active "
                          "version, paired; promote it only when it is not worse")  # fmt: skip
    sh.add_argument("candidate", metavar="ID@VERSION")
    sh.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--standard-limit", type=int, metavar="N", help="only the first N standard validation images")
    sh.add_argument("--no-promote", action="store_true", help="evaluate and record only")
    sh.add_argument("--device", choices=["auto", "cpu", "cuda"])
    sh.set_defaults(fn=run, handler=_cmd_shadow_eval)

    ev = sub.add_parser("eval", help="evaluate a model version; JSON on stdout")
    esub = ev.add_subparsers(dest="eval_task", required=True)
    specs = {
        "segmentation": "Dice per class (mean with 95%% bootstrap interval, min, per image) at the label maps' "
        "resolution",
        "classification": "AUC per finding with 95%% bootstrap intervals and ROC points",
        "ctr": "AUC of the cardiothoracic ratio of an anatomy model for Cardiomegaly",
        "bone": "MAE and SSIM against dual-energy soft-tissue images",
    }
    for name, help_text in specs.items():
        e = esub.add_parser(name, help=help_text)
        if name == "segmentation":
            e.add_argument("--images", required=True, type=Path, metavar="DIR")
            e.add_argument("--masks", required=True, type=Path, metavar="DIR")
            e.add_argument("--worst", type=int, default=4, metavar="K",
                           help="with --report: draw the K lowest-Dice images per class, reference and predicted "
                           "outlines, as lowest_dice_<class>.png (default 4; 0: none)")  # fmt: skip
        elif name in ("classification", "ctr"):
            e.add_argument("--images", required=True, type=Path, metavar="DIR")
            e.add_argument("--labels", required=True, type=Path, metavar="CSV")
            if name == "classification":
                e.add_argument("--hardest", type=int, default=5, metavar="K",
                               help="per finding, list the K lowest-scored positives and K highest-scored "
                               "negatives with their labelled findings (default 5; 0: none)")  # fmt: skip
        if name != "bone":
            e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
            e.add_argument("--seed", type=int, default=0)
            e.add_argument("--against", metavar="ID[@VERSION]",
                           help="also evaluate this version on the same images and report the paired difference "
                           "(--model minus it) with a 95%% bootstrap interval")  # fmt: skip
        else:
            e.add_argument("--pairs", required=True, type=Path, metavar="DIR",
                           help="folder with authentic/ and des/ images of matching names")  # fmt: skip
        e.add_argument("--model", required=True, metavar="ID[@VERSION]")
        e.add_argument("--val-of", metavar="ID@VERSION",
                       help="only the validation images recorded in that trained version's model.json")  # fmt: skip
        e.add_argument(
            "--report", type=Path, metavar="DIR", help="also write report.json and HTML plots here"
        )
        e.add_argument("--device", choices=["auto", "cpu", "cuda"])
        e.add_argument("--no-progress", action="store_true")
        e.set_defaults(fn=run, handler=_cmd_eval)


def run(args) -> int:
    """Dispatch with the errors of these commands turned into one clear line and exit status 2."""
    from inference.device import DeviceUnavailable
    from inference.registry import UnknownModel
    from inference.training.data import DatasetError
    from inference.types import ModelUnavailable
    from services.shadow import ShadowError

    logging.getLogger("cxr_review.training").setLevel(logging.INFO)
    try:
        return args.handler(args)
    except (DatasetError, DeviceUnavailable, FileExistsError, ShadowError) as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
    except UnknownModel as exc:  # only the registry's: any other KeyError is a bug and keeps its traceback
        print(f"cxr-review: error: {exc.args[0]}", file=sys.stderr)
    except ModelUnavailable as exc:
        print(f"cxr-review: error: model {exc}", file=sys.stderr)
    return EXIT_USAGE
