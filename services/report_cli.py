"""`cxr-review reports label` and `cxr-review reports evaluate`: labels of the NIH findings from report text
(`reports.labeller`), and their scores against hand-assigned MeSH terms (`reports.evaluate`).
`cxr-review reports check IMAGE --text REPORT.txt`: the report consistency check (services.report_check) of one
report against the AI's findings on one image (stored results when the image is in the store, else the
classifier runs as in `infer`).

A row that cannot be labelled (text or id not UTF-8, an empty text, an empty or repeated id) is one JSON line
on stderr, `{"line", "id", "code", "message"}`, and the other rows go on: exit 1. A file that is not a table
of reports, or a column that is missing, is a usage error: exit 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from reports import evaluate, labeller, table
from services.store import write_atomic

EXIT_OK, EXIT_SOME_REPORTED, EXIT_USAGE = 0, 1, 2


def _columns(value: str) -> list[str]:
    names = [c.strip() for c in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"column names separated by commas, without empty ones: {value!r}")
    return names


def _usage_error(message: str) -> int:
    print(f"cxr-review: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _unread_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if not labeller.is_read(c)]


class _Reported:
    """Passes the rows on and prints each problem as one JSON line on stderr."""

    def __init__(self) -> None:
        self.count = 0

    def rows(self, items: Iterable[table.Row | table.Problem]) -> Iterator[table.Row]:
        for item in items:
            if isinstance(item, table.Problem):
                self.count += 1
                print(json.dumps(item.to_json()), file=sys.stderr, flush=True)
            else:
                yield item


def _unread_message(columns: list[str]) -> str:
    return (
        f"--text {', '.join(map(repr, columns))}: the indication, history, comparison and technique are not "
        "labelled (a finding named there is the question asked, not a finding); leave them out"
    )


def _cmd_label(args) -> int:
    if unread := _unread_columns(args.text):
        return _usage_error(_unread_message(unread))
    if not args.out.parent.is_dir():
        return _usage_error(f"--out {args.out}: no folder {args.out.parent}")
    reported = _Reported()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([args.id, *labeller.COLUMNS])
    labelled = 0
    try:
        for row in reported.rows(table.read(args.csv, args.id, args.text)):
            values = labeller.values(labeller.label_parts(row.parts))
            writer.writerow([row.id, *("" if values[c] is None else values[c] for c in labeller.COLUMNS)])
            labelled += 1
    except table.TableError as exc:
        return _usage_error(str(exc))
    try:
        write_atomic(args.out, out.getvalue().encode("utf-8"))
    except OSError as exc:
        return _usage_error(f"cannot write {args.out}: {exc.strerror}")
    print(json.dumps({"out": str(args.out), "labelled": labelled, "reported": reported.count}))
    return EXIT_SOME_REPORTED if reported.count else EXIT_OK


def _cmd_evaluate(args) -> int:
    if unread := _unread_columns(args.text):
        return _usage_error(_unread_message(unread))
    reported = _Reported()
    try:
        rows = reported.rows(table.read(args.csv, args.id, args.text, [args.mesh]))
        result = evaluate.evaluate(rows, args.mesh, args.split)
    except table.TableError as exc:
        return _usage_error(str(exc))
    result["reported"] = reported.count
    print(json.dumps(result))
    return EXIT_SOME_REPORTED if reported.count else EXIT_OK


def _ai_findings(path: Path) -> tuple[dict[str, float], dict[str, float], dict, str]:
    """(probabilities, operating points in force, model provenance, "cached" | "computed") of the image's
    findings. Raises importer.FileRejected for a file import would reject, InferUsageError when no classifier
    can run."""
    from sqlalchemy import make_url

    from db import engine as dbe
    from db import repo
    from inference.registry import Registry
    from inference.runner import Runner
    from inference.types import ModelUnavailable
    from services import analysis, context, importer, infer, models_admin, settings
    from viewer import dicom_io

    s = settings.load()
    img = importer.load_checked(path, max_bytes=s.max_upload_bytes)  # the checks and limits of import
    runner = Runner(Registry(s.models_dir), s.device)
    ctx = None
    url = make_url(s.db_url)
    if url.get_backend_name() != "sqlite" or (url.database and Path(url.database).is_file()):  # creates none
        try:  # a store at the newest schema: its stored results, the admin's model and operating points
            ctx = context.build(s)
        except dbe.DatabaseUnavailable:
            ctx = None
    if ctx is not None:
        with dbe.read(ctx.engine) as sess:
            row = repo.image_by_pixel_hash(sess, dicom_io.pixel_sha256(img))
            image = None if row is None else {"id": row.id, "pixel_sha256": row.pixel_sha256,
                                              "file_sha256": row.file_sha256}  # fmt: skip
        if image is not None and (done := analysis.analyse_cached(ctx, runner, image)) and done.findings:
            f = done.findings
            return f["probabilities"], done.thresholds, f["model"], "cached"
        chosen, unavailable = models_admin.active_specs(ctx, runner.registry, ("classification",))
    else:
        chosen, unavailable = analysis.specs_for(runner.registry)
    if (spec := chosen.get("classification")) is None:
        raise infer.InferUsageError(f"no classification model can run: {unavailable}")
    if ctx is not None:
        with dbe.read(ctx.engine) as sess:
            thresholds = models_admin.thresholds_in_force(sess, spec)
    else:
        thresholds = dict(spec.thresholds)
    try:
        res = runner.classify(analysis.model_input(img), spec, thresholds=thresholds)
    except ModelUnavailable as exc:
        raise infer.InferUsageError(f"{exc.model_id}: {exc.reason}") from exc
    return dict(res.probabilities), dict(res.thresholds), spec.provenance(), "computed"


def _cmd_check(args) -> int:
    from inference.device import DeviceUnavailable
    from inference.types import RESEARCH_USE
    from services import importer, infer, report_check

    if not args.image.is_file():
        return _usage_error(f"{args.image}: no such file")
    try:
        text = args.text.read_bytes().decode("utf-8")
    except OSError as exc:
        return _usage_error(f"--text {args.text}: cannot read it ({exc.strerror})")
    except UnicodeDecodeError:
        return _usage_error(f"--text {args.text}: not UTF-8 text")
    try:
        probabilities, thresholds, model, source = _ai_findings(args.image)
    except importer.FileRejected as exc:
        print(json.dumps({"file": str(args.image), "status": "rejected", "code": exc.code, "reason": exc.reason}),
              file=sys.stderr)  # fmt: skip
        return EXIT_SOME_REPORTED
    except (DeviceUnavailable, infer.InferUsageError) as exc:
        return _usage_error(str(exc))
    result = report_check.check(text, probabilities, thresholds)
    out = {
        "flags": [{k: f.to_json()[k] for k in ("finding", "kind", "report_text", "ai_probability")} for f in result.flags],
        "skipped": result.skipped,
        "model": {k: model[k] for k in ("id", "version", "weights_sha256")},
        "ai_results": source,
        "research_use": RESEARCH_USE,
    }
    print(json.dumps(out))
    return EXIT_OK


def add_parsers(sub) -> None:
    """Add `reports label` and `reports evaluate` to the cxr-review subparsers."""
    group = sub.add_parser("reports", help="labels of the NIH findings from radiology report text")
    rsub = group.add_subparsers(dest="reports_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("csv", type=Path, metavar="CSV", help="UTF-8 CSV file, one report per row")
        p.add_argument("--text", required=True, type=_columns, metavar="COL[,COL...]",
                       help="the columns of report text, each read as the section it names (findings, "
                       "impression, ...); headers inside the text (FINDINGS:, INDICATION:) are followed too")  # fmt: skip
        p.add_argument("--id", required=True, metavar="COL", help="the column that identifies a report")

    lab = rsub.add_parser("label", help="one row of labels per report: 1 present, 0 negated, -1 uncertain, "
                          "empty when not mentioned; problems as JSON lines on stderr")  # fmt: skip
    common(lab)
    lab.add_argument("--out", required=True, type=Path, metavar="OUT.csv")
    lab.set_defaults(fn=_cmd_label)

    ev = rsub.add_parser("evaluate", help="precision, recall and F1 per finding against hand-assigned MeSH "
                         "terms, beside a keyword matcher; one JSON object on stdout")  # fmt: skip
    common(ev)
    ev.add_argument("--mesh", required=True, metavar="COL", help="'|'-separated MeSH terms (OpenI mesh_major)")
    ev.add_argument("--split", choices=evaluate.SPLITS, default="heldout",
                    help="reports by a hash of their id: the half the rules were tuned on, the other (default), "
                    "or all")  # fmt: skip
    ev.set_defaults(fn=_cmd_evaluate)

    ch = rsub.add_parser("check", help="the report consistency check of one report against the AI findings on "
                         "one image (stored results where the image is in the store, else the classifier runs as in "
                         "`infer`); one JSON object on stdout. There is no reader here, so no verdicts: a finding the "
                         "report leaves out is not flagged (that needs a reader's accept)")  # fmt: skip
    ch.add_argument("image", type=Path, metavar="IMAGE_FILE", help="DICOM, PNG or JPEG, checked as import checks it")
    ch.add_argument("--text", required=True, type=Path, metavar="REPORT.txt", help="the report, UTF-8 text")
    ch.set_defaults(fn=_cmd_check)
