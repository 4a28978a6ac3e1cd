"""`cxr-review` command line. Import prints one JSON object per file on stdout."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_SOME_REJECTED, EXIT_USAGE, EXIT_NO_ENGINE = 0, 1, 2, 3  # 3: --engine ray cannot run


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2, as argparse does, with our prefix
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"cxr-review: error: {message}\n")


def _cmd_db_upgrade(args) -> int:
    from db import engine as dbe
    from services import settings

    s = settings.load()
    dbe.upgrade(s.db_url)
    print(
        f"database at the newest schema: {s.db_url.split('///')[-1] if s.db_url.startswith('sqlite') else 'server'}"
    )
    return EXIT_OK


def _cmd_init_admin(args) -> int:
    from services import auth, context

    ctx = context.build()
    password = auth.ensure_first_admin(ctx.engine, os.environ.get("CXR_REVIEW_ADMIN_PASSWORD"))
    if password is None:
        print("users exist already; no admin created")
    elif os.environ.get("CXR_REVIEW_ADMIN_PASSWORD"):
        print("created user 'admin' with the password from CXR_REVIEW_ADMIN_PASSWORD")
    else:
        print(
            f"created user 'admin' with the one-time password: {password}\n(shown once; change it under Account)"
        )
    return EXIT_OK


def _cmd_users_add(args) -> int:
    from services import auth, context

    ctx = context.build()
    given = os.environ.get(args.password_env) if args.password_env else None
    if args.password_env and not given:
        print(f"cxr-review: error: environment variable {args.password_env} is empty", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Chosen by an admin for someone else, or generated: one-time either way.
        password = auth.add_user(ctx.engine, args.name, args.role, given, one_time=True)
    except auth.AuthError as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"created user {args.name!r} ({args.role})"
        + (
            " with a one-time password from " + args.password_env
            if given
            else f" with the one-time password: {password}"
        )
        + " (to be changed at the first sign-in)"
    )
    return EXIT_OK


def _cmd_users_list(args) -> int:
    from db import accounts
    from db import engine as dbe
    from services import auth, context

    ctx = context.build()
    locked = auth.locked_names(ctx.engine)
    with dbe.read(ctx.engine) as s:
        for u in accounts.list_users(s):
            state = ["active" if u.is_active else "disabled"]
            if u.username in locked:
                state.append(f"locked until {locked[u.username].astimezone():%H:%M %Z}")
            if u.must_change_password:
                state.append("must change password")
            print(f"{u.username}\t{u.role.value}\t{', '.join(state)}")
    return EXIT_OK


def _cmd_users_change(args) -> int:
    """disable | enable | role | reset | unlock: an admin's account changes, audited as made on the command
    line (the audit has no signed-in actor for them)."""
    from services import auth, context

    ctx = context.build()
    try:
        if args.users_command in ("disable", "enable"):
            auth.set_active(ctx.engine, args.name, args.users_command == "enable")
            print(f"{args.name!r} {args.users_command}d")
        elif args.users_command == "role":
            auth.set_role(ctx.engine, args.name, args.role)
            print(f"{args.name!r} is now {args.role}")
        elif args.users_command == "reset":
            given = os.environ.get(args.password_env) if args.password_env else None
            if args.password_env and not given:
                print(
                    f"cxr-review: error: environment variable {args.password_env} is empty", file=sys.stderr
                )
                return EXIT_USAGE
            password = auth.reset_password(ctx.engine, args.name, password=given)
            print(f"{args.name!r}: new one-time password (to be changed at the next sign-in)"
                  + ("" if given else f": {password}"))  # fmt: skip
        else:
            unlocked = auth.unlock(ctx.engine, args.name)
            print(f"{args.name!r} unlocked" if unlocked else f"{args.name!r} was not locked")
    except auth.AuthError as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _cmd_audit(args) -> int:
    import datetime as dt

    from services import audit_log, context

    ctx = context.build()
    try:
        since = dt.date.fromisoformat(args.since) if args.since else None
    except ValueError:
        print("cxr-review: error: --since must be a date, YYYY-MM-DD", file=sys.stderr)
        return EXIT_USAGE
    found = audit_log.rows(ctx.engine, actions=tuple(args.action), user=args.user, since=since)
    data = audit_log.to_csv(found)
    if args.out:
        from services.store import write_atomic

        write_atomic(args.out, data)
        audit_log.record_export(ctx.engine, None, args.out.name, len(found))
        print(f"{len(found)} audit rows written to {args.out}")
    else:
        audit_log.record_export(ctx.engine, None, "stdout", len(found))
        sys.stdout.write(data.decode())
    return EXIT_OK


def _cmd_import(args) -> int:
    from services import context, importer, sidecar

    try:
        day_zero = dt.date.fromisoformat(args.day_zero) if args.day_zero else None
    except ValueError:
        print(f"cxr-review: error: --day-zero {args.day_zero!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return EXIT_USAGE
    try:
        metadata = (
            sidecar.load(args.metadata, issuer=args.issuer, day_zero=day_zero) if args.metadata else None
        )
    except sidecar.SidecarError as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ctx = context.build()
    rejected = 0
    results = importer.import_paths(
        ctx.engine, ctx.store, args.paths, max_bytes=ctx.settings.max_upload_bytes, metadata=metadata
    )
    done = []
    for result in results:
        rejected += result.status == "rejected"
        done.append(result)
        print(json.dumps(result.to_json()), flush=True)
    importer.record_batch(ctx.engine, done, actor_id=None, via="command line")
    return EXIT_SOME_REJECTED if rejected else EXIT_OK


def _cmd_infer(args) -> int:
    from inference.device import DeviceUnavailable
    from inference.registry import Registry
    from inference.runner import Runner
    from services import infer, settings, sidecar

    s = settings.load()
    if problem := _engine_problem(args):
        print(f"cxr-review: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.out.exists() and not args.out.is_dir():
        print(f"cxr-review: error: --out {args.out} exists and is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        metadata = sidecar.load(args.metadata) if args.metadata else None
        # On Ray the actors pick their device: the models are only looked up here.
        runner = Runner(Registry(s.models_dir), "cpu" if args.engine == "ray" else args.device or s.device)
        picked = infer.pick_models(runner.registry, args.model)
    except (sidecar.SidecarError, DeviceUnavailable, infer.InferUsageError) as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.engine == "ray":
        return _infer_on_ray(args, s, picked, metadata)
    rejected = 0
    lines = infer.infer_paths(
        runner,
        args.paths,
        args.out,
        max_bytes=s.max_upload_bytes,
        picked=picked,
        metadata=metadata,
        in_force=_thresholds_in_force(s),
    )
    for line in lines:
        rejected += line.status == "rejected"
        print(json.dumps(line.to_json()), flush=True)
    return EXIT_SOME_REJECTED if rejected else EXIT_OK


def _engine_problem(args) -> str | None:
    """Why the engine options cannot run as given: Ray options without --engine ray would otherwise be
    ignored silently (the local engine running where Ray was meant)."""
    given = (("--ray-address", args.ray_address), ("--ray-cpus", args.ray_cpus), ("--actors", args.actors),
             ("--threads-per-actor", args.threads_per_actor))  # fmt: skip
    ray_options = [name for name, v in given if v is not None]
    if args.engine != "ray" and ray_options:
        return f"{', '.join(ray_options)} need --engine ray"
    if args.ray_address and args.ray_cpus is not None:
        return "--ray-cpus is for a local Ray; a cluster at --ray-address has its own"
    for name, v in given[1:]:
        if v is not None and v < 1:
            return f"{name} must be at least 1"
    return None


def _interrupted() -> int:
    # The Ray session has ended by now (a local Ray is stopped); what was printed is done and kept.
    print("\ncxr-review: interrupted; what was done so far is kept (a local Ray is stopped)", file=sys.stderr)
    return 130


def _ray_failed(exc) -> int:
    print(f"cxr-review: error: {exc}", file=sys.stderr)
    return EXIT_NO_ENGINE


def _infer_on_ray(args, s, picked, metadata) -> int:
    """infer's outputs, computed on Ray (services.ray_engine); Ray that cannot run is an error, exit 3."""
    from services import ray_engine

    rejected = 0
    try:
        with ray_engine.session(args.ray_address, args.ray_cpus) as ray:
            lines = ray_engine.infer_paths(
                ray, s, args.paths, args.out, device=args.device or s.device, picked=picked,
                metadata=metadata, in_force=_thresholds_in_force(s), actors=args.actors,
                threads=args.threads_per_actor,
            )  # fmt: skip
            for line in lines:
                rejected += line.status == "rejected"
                print(json.dumps(line.to_json()), flush=True)
    except ray_engine.RayUnavailable as exc:
        return _ray_failed(exc)
    except KeyboardInterrupt:
        return _interrupted()
    print(f"run summary: {args.out / ray_engine.SUMMARY}", file=sys.stderr)
    return EXIT_SOME_REJECTED if rejected else EXIT_OK


def _cmd_analyse(args) -> int:
    from inference.device import DeviceUnavailable
    from inference.registry import Registry
    from inference.runner import Runner
    from services import context, precompute

    if problem := _engine_problem(args):
        print(f"cxr-review: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.all == bool(args.studies):
        print("cxr-review: error: give --all or one or more STUDY (id or StudyInstanceUID)", file=sys.stderr)
        return EXIT_USAGE
    if args.engine == "ray":
        from services import ray_engine

        try:  # also when everything turns out stored: a wrong address is said at once
            ray_engine.check(args.ray_address)
        except ray_engine.RayUnavailable as exc:
            return _ray_failed(exc)
    ctx = context.build()
    try:
        # On Ray the actors pick their device: this runner only looks up what is stored.
        device = "cpu" if args.engine == "ray" else args.device or ctx.settings.device
        runner = Runner(Registry(ctx.settings.models_dir), device)
        images = precompute.select_images(ctx, args.studies, args.all)
    except (DeviceUnavailable, precompute.UnknownStudy) as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    todo = precompute.not_stored(ctx, runner, images)
    outcomes = ["stored_already"] * (len(images) - len(todo))
    if todo and args.engine == "ray":
        try:
            with ray_engine.session(args.ray_address, args.ray_cpus) as ray:
                results = ray_engine.analyse_images(
                    ray, ctx.settings, todo, device=args.device or ctx.settings.device, actors=args.actors,
                    threads=args.threads_per_actor,
                )  # fmt: skip
                outcomes += _analysed(results, len(todo))
        except ray_engine.RayUnavailable as exc:
            return _ray_failed(exc)
        except KeyboardInterrupt:
            return _interrupted()
    elif todo:
        outcomes += _analysed(precompute.analyse_local(ctx, runner, todo), len(todo))
    found = precompute.counts(outcomes)
    print(json.dumps({"images": len(images)} | found))
    return EXIT_SOME_REJECTED if found["failed"] else EXIT_OK


def _analysed(results, total: int) -> list[str]:
    """Outcomes of `results` ((image id, outcome, detail) each), with a progress bar on stderr; failures are
    named there (image id and reason: no patient identifiers)."""
    from tqdm import tqdm

    outcomes = []
    with tqdm(total=total, desc="analyse", unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
        for image_id, outcome, detail in results:
            if outcome == "failed":
                bar.write(f"cxr-review: image {image_id}: failed: {detail}", file=sys.stderr)
            outcomes.append(outcome)
            bar.update(1)
    return outcomes


def _cmd_similar(args) -> int:
    from inference.device import DeviceUnavailable
    from inference.embeddings import DEFAULT_MODEL, UnsupportedModel
    from inference.registry import Registry
    from inference.runner import Runner
    from inference.types import ModelUnavailable
    from services import context, settings, similar

    s = settings.load()
    if args.k < 1:
        print("cxr-review: error: --k must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.among is None and not args.among_db:
        print("cxr-review: error: give --among DIR, --among db or --among-db", file=sys.stderr)
        return EXIT_USAGE
    if args.among is not None and str(args.among) != "db" and not args.among.is_dir():
        print(f"cxr-review: error: --among {args.among} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    among = []
    if args.among_db or str(args.among) == "db":  # the word "db": the app's images (write ./db for a folder)
        ctx = context.build(s)
        among += similar.stored_sources(ctx.engine, ctx.store)
    if args.among is not None and str(args.among) != "db":
        among += similar.folder_sources([args.among])
    try:
        runner = Runner(Registry(s.models_dir), args.device or s.device)
        spec = runner.registry.resolve(args.model or DEFAULT_MODEL)
        if spec.task != "classification":
            raise KeyError(f"{spec.ref} is a {spec.task} model; embeddings come from a classification model")
        lines = similar.search(
            runner, args.paths, among, s.data_dir / "embeddings", max_bytes=s.max_upload_bytes, k=args.k,
            model=spec.ref, layer=args.layer,
        )  # fmt: skip
        rejected = 0
        for line in lines:
            rejected += line["status"] == "rejected"
            print(json.dumps(line), flush=True)
    except (DeviceUnavailable, ModelUnavailable) as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyError as exc:
        print(f"cxr-review: error: --model {args.model}: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    except UnsupportedModel as exc:  # a classifier whose network has no such layer
        print(f"cxr-review: error: --model {args.model} --layer {args.layer}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_SOME_REJECTED if rejected else EXIT_OK


def _thresholds_in_force(s):
    """spec -> the thresholds in force for it in the app's database (its active threshold set), or None where
    there is no usable database (infer then uses the models' defaults and says so)."""
    from sqlalchemy.engine import make_url

    from db.engine import DatabaseBusy, DatabaseUnavailable
    from services import context, threshold_sets

    url = make_url(s.db_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
        return None  # no app here: opening the file would create an empty database
    try:
        ctx = context.build(s)
    except (DatabaseUnavailable, DatabaseBusy):
        return None

    def in_force(spec):
        try:
            return threshold_sets.in_force(ctx, spec)
        except (DatabaseUnavailable, DatabaseBusy) as exc:
            return threshold_sets.InForce(
                dict(spec.thresholds), f"model defaults (database unreadable: {exc})"
            )

    return in_force


def _cmd_render(args) -> int:
    import math

    from services import importer, settings
    from viewer import export, windowing

    window = windowing.Window(*args.window) if args.window else None
    if window is not None and not (
        math.isfinite(window.center) and math.isfinite(window.width) and window.width > 0
    ):
        print(
            "cxr-review: error: --window needs a finite centre and a finite positive width", file=sys.stderr
        )
        return EXIT_USAGE
    try:  # the checks and limits of import: size cap, header checks, decoding in a limited worker
        img = importer.load_checked(args.file, max_bytes=settings.load().max_upload_bytes)
    except importer.FileRejected as exc:
        print(f"cxr-review: {args.file}: rejected ({exc.code}): {exc.reason}", file=sys.stderr)
        return EXIT_SOME_REJECTED
    for warning in img.header.warnings:  # values that were not used, and what replaced them
        print(f"cxr-review: {args.file}: warning: {warning}", file=sys.stderr)
    out = windowing.render(img, window)
    try:
        export.write_png(args.out, out)
    except OSError as exc:
        print(f"cxr-review: error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(
        json.dumps(
            {"file": str(args.file), "out": str(args.out), "rows": out.shape[0], "columns": out.shape[1]}
        )
    )
    return EXIT_OK


def _cmd_serve(args) -> int:
    from streamlit.web import cli as stcli

    app = Path(__file__).resolve().parent.parent / "asgi.py"  # the app with its session-cookie endpoint
    sys.argv = [
        "streamlit",
        "run",
        str(app),
        "--server.address",
        args.address,
        "--server.port",
        str(args.port),
    ]
    return stcli.main()


def _engine_options(p) -> None:
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local",
        help="local: this process (default); ray: an actor pool on Ray Data (local Ray unless --ray-address)",
    )  # fmt: skip
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="a running Ray cluster: HOST:PORT of its head (GCS), or auto on one of its nodes",
    )
    p.add_argument(
        "--ray-cpus", type=int, metavar="N", help="CPUs of the local Ray (default: all of this machine's)"
    )
    p.add_argument(
        "--actors", type=int, metavar="N", help="actor pool size (default: one per GPU, else CPUs - 1)"
    )
    p.add_argument(
        "--threads-per-actor", type=int, metavar="N",
        help="torch threads of each actor (default: the one CPU it asks for); the local engine's count gives "
        "bit-identical outputs",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="cxr-review", description="CXR Review: chest X-ray review workstation (research use only)."
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create or migrate the database to the newest schema").set_defaults(
        fn=_cmd_db_upgrade
    )

    sub.add_parser("init-admin", help="create the first admin if there are no users").set_defaults(
        fn=_cmd_init_admin
    )

    users = sub.add_parser("users", help="local accounts").add_subparsers(dest="users_command", required=True)
    add = users.add_parser(
        "add", help="add an account; prints a one-time password unless --password-env is given"
    )
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["radiologist", "annotator", "researcher", "admin"])
    add.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    add.set_defaults(fn=_cmd_users_add)
    users.add_parser("list", help="list accounts, with their state").set_defaults(fn=_cmd_users_list)
    for verb, text in (
        ("disable", "disable an account (its sessions end at once)"),
        ("enable", "enable a disabled account"),
        ("role", "change an account's role"),
        (
            "reset",
            "give an account a new one-time password (printed unless --password-env; ends its sessions)",
        ),
        ("unlock", "lift the lockout of a user name after failed sign-ins"),
    ):
        change = users.add_parser(verb, help=text)
        change.add_argument("name")
        if verb == "role":
            change.add_argument("role", choices=["radiologist", "annotator", "researcher", "admin"])
        if verb == "reset":
            change.add_argument("--password-env", metavar="VAR", help="read the password from this variable")
        change.set_defaults(fn=_cmd_users_change)

    aud = sub.add_parser("audit", help="the audit as CSV (all rows, newest first), on stdout or --out")
    aud.add_argument("--since", metavar="YYYY-MM-DD", help="rows from this UTC day on")
    aud.add_argument("--user", help="rows where this account acted or was acted upon")
    aud.add_argument("--action", action="append", default=[], help="only this action; repeatable")
    aud.add_argument("--out", type=Path, metavar="CSV", help="write here (readable by this user only)")
    aud.set_defaults(fn=_cmd_audit)

    imp = sub.add_parser(
        "import", help="import DICOM/PNG/JPEG files or folders (recursive); JSON lines on stdout"
    )
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument(
        "--metadata",
        type=Path,
        metavar="CSV",
        help="patient ID, age, sex and view for PNG/JPEG files, by file name (DICOM keyword or NIH column names)",
    )
    imp.add_argument(
        "--issuer",
        metavar="NAME",
        help="IssuerOfPatientID for the --metadata rows that name none: a patient's studies link by (issuer, "
        "patient ID), so give each data set its own",
    )
    imp.add_argument(
        "--day-zero",
        metavar="YYYY-MM-DD",
        help="the date an `offset` column (days) of --metadata counts from: it dates the rows without a StudyDate",
    )
    imp.set_defaults(fn=_cmd_import)

    inf = sub.add_parser(
        "infer",
        help="run the AI models on DICOM/PNG/JPEG files or folders (recursive), no database: a JSON and PNGs "
        "per file in --out, one JSON line per file on stdout (research use only)",
    )
    inf.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    inf.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    inf.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="default: CXR_REVIEW_DEVICE (auto: CUDA when present)",
    )
    inf.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID[@VERSION]",
        help="run this model (version) for its task instead of the default; repeatable",
    )
    inf.add_argument(
        "--metadata",
        type=Path,
        metavar="CSV",
        help="view position of PNG/JPEG files, by file name (as import)",
    )
    _engine_options(inf)
    inf.set_defaults(fn=_cmd_infer)

    ana = sub.add_parser(
        "analyse",
        help="compute the AI results of stored studies into the database ahead of reading, as the viewer "
        "would (quality gate first); what is stored already is skipped; one JSON line of counts",
    )
    ana.add_argument("studies", nargs="*", metavar="STUDY", help="a study id or StudyInstanceUID")
    ana.add_argument("--all", action="store_true", help="every stored study")
    ana.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: CXR_REVIEW_DEVICE")
    _engine_options(ana)
    ana.set_defaults(fn=_cmd_analyse)

    sim = sub.add_parser(
        "similar",
        help="the images of --among that look most like each given image (DICOM/PNG/JPEG files or folders); "
        "one JSON line per file (research use only)",
    )
    sim.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    sim.add_argument(
        "--among", type=Path, metavar="DIR|db",
        help='search the images in this folder; the word "db": every image in the app\'s database',
    )  # fmt: skip
    sim.add_argument("--among-db", action="store_true", help="also search every image in the app's database")
    sim.add_argument("--k", type=int, default=5, help="neighbours per image (default 5)")
    sim.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: CXR_REVIEW_DEVICE")
    sim.add_argument("--model", metavar="ID[@VERSION]", help="classification model whose features are used")
    sim.add_argument(
        "--layer", choices=["bneck_grid4", "penultimate"], default="bneck_grid4",
        help="which features (default bneck_grid4: finds the same patient's other film far more often)",
    )  # fmt: skip
    sim.set_defaults(fn=_cmd_similar)

    ren = sub.add_parser("render", help="write the exact 8-bit image the viewer shows by default")
    ren.add_argument("file", type=Path)
    ren.add_argument("--out", required=True, type=Path)
    ren.add_argument("--window", nargs=2, type=float, metavar=("CENTER", "WIDTH"))
    ren.set_defaults(fn=_cmd_render)

    from services import annotation_cli, model_cli

    model_cli.add_parsers(sub)  # train, eval
    annotation_cli.add_parsers(sub)  # annotations, tasks, export

    from services import report_cli

    report_cli.add_parsers(sub)  # reports label, reports evaluate

    from services import pacs_cli

    pacs_cli.add_parsers(sub)  # pacs query, retrieve, store

    from services import evidence_cli

    evidence_cli.add_parsers(sub)  # evidence segmentation|classification

    srv = sub.add_parser("serve", help="start the web app")
    srv.add_argument("--address", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8501)
    srv.set_defaults(fn=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `train` in model.json
    from db.engine import DatabaseBusy, DatabaseUnavailable
    from services.settings import SettingsError

    try:
        return args.fn(args)
    except (SettingsError, DatabaseUnavailable, DatabaseBusy) as exc:
        print(f"cxr-review: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
