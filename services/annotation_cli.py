"""`cxr-review annotations import|agreement`, `cxr-review tasks create|list` and `cxr-review export`: JSON out,
exit 0 (all done), 1 (some rows or images rejected or skipped, the others done) or 2 (usage error)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_OK, EXIT_SOME_REJECTED, EXIT_USAGE = 0, 1, 2


def _error(msg: str) -> int:
    print(f"cxr-review: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_import(args) -> int:
    from services import annotation_import, context

    ctx = context.build()
    rejected = 0
    for path in args.files:
        try:
            results = annotation_import.import_file(ctx, path, args.reader, args.task)
        except annotation_import.ImportFileError as exc:
            print(
                json.dumps(
                    {
                        "file": str(path),
                        "where": None,
                        "image": None,
                        "status": "rejected",
                        "reason": str(exc),
                    }
                )
            )
            rejected += 1
            continue
        for r in results:
            rejected += r.status == "rejected"
            print(json.dumps({"file": str(path)} | r.as_json()), flush=True)
    return EXIT_SOME_REJECTED if rejected else EXIT_OK


def _cmd_agreement(args) -> int:
    from services import agreement_report, context

    ctx = context.build()
    try:
        task_id = agreement_report.task_id_of(ctx, args.task)
        readers = [r.strip() for r in args.readers.split(",") if r.strip()] if args.readers else None
        out = agreement_report.report(ctx, task_id, readers)
    except agreement_report.AgreementError as exc:
        return _error(str(exc))
    print(json.dumps(out))
    return EXIT_OK


def _cli_admin(s):
    """Who acts from the command line: whoever may run it on the server acts as the first active admin."""
    from db import accounts
    from services.auth import SignedIn

    admin = next((u for u in accounts.list_users(s) if u.role.value == "admin" and u.is_active), None)
    return None if admin is None else SignedIn(admin.id, admin.username, "admin", False)


def _cmd_task_create(args) -> int:
    from sqlalchemy import select

    from db import engine as dbe
    from db.annotations import image_ref
    from db.models import Image
    from services import context, labelling

    ctx = context.build()
    with dbe.read(ctx.engine) as s:
        if (actor := _cli_admin(s)) is None:
            return _error("no active admin account: create one first (cxr-review init-admin)")
        if args.images:
            refs = [line.strip() for line in Path(args.images).read_text().splitlines() if line.strip()]
            found = {ref: image_ref(s, ref) for ref in refs}
            if missing := [r for r, i in found.items() if i is None]:
                return _error(f"{len(missing)} image(s) not stored, e.g. {missing[0]!r}")
            image_ids = [i.id for i in found.values()]
        else:
            image_ids = list(s.scalars(select(Image.id)))
    readers = {r: False for r in args.readers.split(",") if r} | {
        r: True for r in (args.adjudicators or "").split(",") if r
    }
    try:
        task = labelling.create(
            ctx, actor, name=args.name, image_ids=image_ids, readers=readers,
            findings=args.findings.split(",") if args.findings else None, readers_per_image=args.readers_per_image,
            blinded=args.blinded, queue_order=args.order,
        )  # fmt: skip
    except labelling.TaskError as exc:
        return _error(str(exc))
    print(json.dumps({"task": task.name, "id": task.id, "images": task.n_images, "readers": task.readers}))
    return EXIT_OK


def _cmd_task_list(args) -> int:
    from services import context, labelling

    ctx = context.build()
    for t in labelling.all_tasks(ctx):
        p = labelling.progress(ctx, t.id)
        print(json.dumps({"task": t.name, "images": p.images, "done": p.done, "finals": p.finals,
                          "per_reader": p.per_reader, "readers_per_image": t.readers_per_image,
                          "blinded": t.blinded, "order": t.queue_order}))  # fmt: skip
    return EXIT_OK


def _cmd_export(args) -> int:
    from tqdm import tqdm

    from services import agreement_report, context, exports

    ctx = context.build()
    if args.out.exists() and not args.out.is_dir():
        return _error(f"--out {args.out} exists and is not a folder")
    try:
        task_id = agreement_report.task_id_of(ctx, args.task)
        runner = None
        if args.source == "ai":
            from inference.registry import Registry
            from inference.runner import Runner

            runner = Runner(Registry(ctx.settings.models_dir), ctx.settings.device)
        bar = tqdm(desc="analysing", unit="image", file=sys.stderr, disable=args.source != "ai")

        def progress(done, total):
            bar.total = total
            bar.update(1)

        items = exports.gather(ctx, args.source, task_id, args.study, runner, progress)
        bar.close()
        results = exports.write(ctx, args.format, items, args.out, source=args.source)
    except (exports.ExportError, agreement_report.AgreementError) as exc:
        return _error(str(exc))
    skipped = 0
    for r in results:
        skipped += r.status != "exported"
        print(json.dumps(r.as_json()), flush=True)
    if not results:
        print(json.dumps({"status": "empty", "reason": f"no annotations from source {args.source!r}"}))
    return EXIT_SOME_REJECTED if skipped else EXIT_OK


def add_parsers(sub) -> None:
    ann = sub.add_parser("annotations", help="readers' annotations").add_subparsers(
        dest="ann_command", required=True
    )
    imp = ann.add_parser(
        "import", help="import labels (NIH-style CSV) or boxes (COCO JSON) as a reader's annotations"
    )
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp.add_argument(
        "--reader", required=True, help="the reader they belong to (created as an annotator if new)"
    )
    imp.add_argument("--task", help="the labelling task they belong to")
    imp.set_defaults(fn=_cmd_import)
    agr = ann.add_parser(
        "agreement", help="agreement between readers: kappa per finding, box F1, mask Dice/HD95"
    )
    agr.add_argument("--task")
    agr.add_argument("--readers", metavar="A,B,...")
    agr.set_defaults(fn=_cmd_agreement)

    tasks = sub.add_parser("tasks", help="labelling tasks").add_subparsers(dest="task_command", required=True)
    mk = tasks.add_parser("create", help="make a labelling task")
    mk.add_argument("name")
    mk.add_argument("--readers", required=True, metavar="A,B,...")
    mk.add_argument("--adjudicators", metavar="A,...", help="readers who set the final labels")
    mk.add_argument(
        "--images",
        type=Path,
        metavar="LIST",
        help="a file of image names (SOP UID, pixel sha256 or file name), one per line; default every image",
    )
    mk.add_argument("--findings", metavar="F,G,...", help="the findings to label (default all 14)")
    mk.add_argument("--readers-per-image", type=int, default=1)
    mk.add_argument("--blinded", action="store_true")
    mk.add_argument(
        "--order", default="random", choices=["random", "uncertainty", "model_disagreement", "rejected_first"]
    )
    mk.set_defaults(fn=_cmd_task_create)
    tasks.add_parser("list", help="tasks and their progress").set_defaults(fn=_cmd_task_list)

    exp = sub.add_parser("export", help="export annotations as CSV, COCO, DICOM SEG or DICOM SR")
    exp.add_argument("--format", required=True, choices=["csv", "coco", "seg", "sr"])
    exp.add_argument("--out", required=True, type=Path, metavar="DIR")
    exp.add_argument("--task")
    exp.add_argument("--source", default="final", help="final (default), reader:NAME or ai")
    exp.add_argument(
        "--study", action="append", default=[], metavar="UID", help="only this study; repeatable"
    )
    exp.set_defaults(fn=_cmd_export)
