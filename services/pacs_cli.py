"""`cxr-review pacs query|retrieve|store`: JSON lines on stdout, errors on stderr; exit 0 (all done), 1 (some instances
rejected, a study not retrieved or an object not stored; the others done) or 2 (usage or configuration error, or a
query that failed)."""

from __future__ import annotations

import json
import sys

EXIT_OK, EXIT_SOME_REJECTED, EXIT_USAGE = 0, 1, 2
USAGE_CODES = {"not_configured", "bad_input"}  # the command itself cannot work: nothing was tried


def _error(msg: str) -> int:
    print(f"cxr-review: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _config(ctx):
    from services import pacs

    return pacs.config(ctx.settings)


def _cmd_query(args) -> int:
    from services import pacs, settings

    try:  # no database needed
        hits = pacs.query(pacs.config(settings.load()), patient_id=args.patient_id, modality=args.modality,
                          since=args.since)  # fmt: skip
    except pacs.PacsError as exc:
        return _error(exc.message)
    for hit in hits:
        print(json.dumps(hit.to_json()), flush=True)
    return EXIT_OK


def _cmd_retrieve(args) -> int:
    from services import context, importer, pacs

    ctx = context.build()
    try:
        cfg = _config(ctx)
        for uid in args.study_uids:
            pacs.check_uid(uid)
    except pacs.PacsError as exc:
        return _error(exc.message)
    failed = False
    for got in pacs.retrieve_many(ctx, cfg, args.study_uids, via="command line"):
        uid = got.study_instance_uid
        for line in got.lines():
            print(json.dumps(line), flush=True)
        if got.error:
            print(f"cxr-review: study {uid}: not retrieved: {got.error.message}", file=sys.stderr)
        elif got.results:
            print(f"cxr-review: study {uid}: {importer.batch_summary(r.status for r in got.results)}", file=sys.stderr)
        failed |= not got.ok
    return EXIT_SOME_REJECTED if failed else EXIT_OK


def _cmd_store(args) -> int:
    from inference.registry import Registry
    from inference.runner import Runner
    from services import context, pacs

    what = tuple(dict.fromkeys(w.strip().lower() for w in args.what.split(",") if w.strip()))
    ctx = context.build()
    try:
        cfg = _config(ctx)
        runner = Runner(Registry(ctx.settings.models_dir), ctx.settings.device)
        done = pacs.store(ctx, cfg, args.study, what, runner, via="command line")
    except pacs.PacsError as exc:
        print(f"cxr-review: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.code in USAGE_CODES or exc.code == "not_found" else EXIT_SOME_REJECTED
    for line in done.lines():
        print(json.dumps(line), flush=True)
    return EXIT_SOME_REJECTED if done.skipped else EXIT_OK


def add_parsers(sub) -> None:
    p = sub.add_parser("pacs", help="a PACS over DICOMweb (CXR_REVIEW_PACS_URL): find, retrieve, send back")
    cmd = p.add_subparsers(dest="pacs_command", required=True)
    q = cmd.add_parser("query", help="studies with CR / DX images; one JSON line per study")
    q.add_argument("--patient-id", metavar="ID")
    q.add_argument("--modality", choices=["DX", "CR"])
    q.add_argument("--since", metavar="YYYYMMDD", help="studies from this day on")
    q.set_defaults(fn=_cmd_query)
    r = cmd.add_parser(
        "retrieve",
        help="import studies' CR / DX instances through the import's checks; one JSON line per instance",
    )
    r.add_argument("study_uids", nargs="+", metavar="STUDY_UID")
    r.set_defaults(fn=_cmd_retrieve)
    s = cmd.add_parser(
        "store",
        help="send a study's final annotations, or else the AI's reading, as DICOM SEG / SR (research use only)",
    )
    s.add_argument("--study", required=True, metavar="UID")
    s.add_argument("--what", default="seg,sr", metavar="seg,sr", help="what to send (default: seg,sr)")
    s.set_defaults(fn=_cmd_store)
