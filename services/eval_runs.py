"""Running classification model versions on an evaluation set in the background.

A run is a row of eval_runs (one model version on one set) that records its progress as it goes, so the page
that started it can be left or reloaded. One worker thread per process takes queued runs in order. Results go
where the viewer keeps its own, the predictions cache by (pixel sha256, model id, version, weights sha256):
whatever the viewer computed already is reused, and what a run computes the viewer reuses.

A run left "running" by a process that stopped (its heartbeat older than STALE_S) is queued again when a worker
starts, and goes on where it stopped (what it stored is reused). Images that cannot be read any more (a folder
moved, a file changed) are listed in the run's `missing` with the reason; the run still finishes."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from db import audit
from db import engine as dbe
from db.models import EvalRun, EvalSet, Image, Prediction, utcnow
from inference.runner import Runner
from inference.types import ModelSpec, ModelUnavailable
from services import analysis, eval_sets, importer
from services.context import Context
from viewer import dicom_io

log = logging.getLogger(__name__)
STALE_S = 30.0  # a running run without a heartbeat for this long belongs to a process that stopped
BEAT_S = 0.5  # progress is written at most this often (and at the end)


class RunRefused(Exception):
    """A run could not be started (not a classification model, unusable version, unknown set)."""


@dataclass(frozen=True)
class RunInfo:
    id: int
    set_id: int
    model_id: str
    model_version: str
    weights_sha256: str
    status: str
    n_total: int
    n_done: int
    n_reused: int
    missing: list[dict]
    error: str | None
    resumed: int
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def ref(self) -> str:
        return f"{self.model_id}@{self.model_version}"

    @property
    def fraction(self) -> float:
        return self.n_done / self.n_total if self.n_total else 1.0


def _info(r: EvalRun) -> RunInfo:
    return RunInfo(r.id, r.set_id, r.model_id, r.model_version, r.weights_sha256, r.status, r.n_total, r.n_done,
                   r.n_reused, json.loads(r.missing), r.error, r.resumed, r.created_at, r.finished_at)  # fmt: skip


def start(ctx: Context, runner: Runner, set_id: int, refs: list[str], user_id: int) -> list[int]:
    """Queue one run per model version ("id@version") on the set (one transaction) and make sure a worker takes
    them. Refused as a whole when one version is not a usable classification model."""
    specs = []
    for ref in dict.fromkeys(refs):
        try:
            spec = runner.registry.check(runner.registry.resolve(ref))
        except (KeyError, ModelUnavailable) as exc:
            raise RunRefused(f"{ref} cannot run: {exc}") from exc
        if spec.task != "classification":
            raise RunRefused(f"{spec.ref} is a {spec.task} model: only classification models are evaluated here")
        specs.append(spec)
    if not specs:
        raise RunRefused("choose at least one model version")

    def tx(s):
        found = s.get(EvalSet, set_id)
        if found is None:
            raise RunRefused(f"evaluation set {set_id} does not exist")
        runs = [EvalRun(set_id=set_id, model_id=sp.model_id, model_version=sp.version, weights_sha256=sp.weights_sha256,
                        status="queued", n_total=found.n_items, created_by_id=user_id) for sp in specs]  # fmt: skip
        s.add_all(runs)
        s.flush()
        audit.add(s, "eval_run_started", actor_id=user_id, target=f"{found.name} v{found.version}",
                  details={"models": [sp.ref for sp in specs]})  # fmt: skip
        return [r.id for r in runs]

    ids = dbe.write(ctx.engine, tx)
    ensure_worker(ctx, runner)
    return ids


def runs_of(ctx: Context, set_id: int) -> list[RunInfo]:
    """The set's runs, newest first."""
    with dbe.read(ctx.engine) as s:
        return [_info(r) for r in s.scalars(select(EvalRun).where(EvalRun.set_id == set_id).order_by(EvalRun.id.desc()))]


def get(ctx: Context, run_id: int) -> RunInfo:
    with dbe.read(ctx.engine) as s:
        row = s.get(EvalRun, run_id)
        if row is None:
            raise LookupError(f"evaluation run {run_id} does not exist")
        return _info(row)


# --- the worker -----------------------------------------------------------------------------------------------
_lock = threading.Lock()
_workers: dict[str, threading.Thread] = {}  # database URL -> its worker in this process


def ensure_worker(ctx: Context, runner: Runner) -> bool:
    """Start this process's worker for the database when queued work (or a run abandoned by a stopped process)
    waits and none is working; True when one is working now."""
    key = str(ctx.engine.url)
    with _lock:
        alive = (t := _workers.get(key)) is not None and t.is_alive()
        if alive:
            return True
        requeue_abandoned(ctx)
        with dbe.read(ctx.engine) as s:
            waiting = s.scalar(select(EvalRun.id).where(EvalRun.status == "queued").limit(1))
        if waiting is None:
            return False
        t = threading.Thread(target=_work, args=(ctx, runner), name="eval-runs", daemon=True)
        _workers[key] = t
        t.start()
        return True


def requeue_abandoned(ctx: Context, now: dt.datetime | None = None) -> int:
    """Queue again the runs left "running" whose heartbeat stopped more than STALE_S ago (their process
    stopped); they go on where they stopped. Returns how many."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=STALE_S)
    stale = (EvalRun.status == "running") & ((EvalRun.heartbeat_at < cutoff) | EvalRun.heartbeat_at.is_(None))
    with dbe.read(ctx.engine) as s:  # most page views find none: no write for them
        if s.scalar(select(EvalRun.id).where(stale).limit(1)) is None:
            return 0

    def tx(s):
        return s.execute(update(EvalRun).where(stale).values(status="queued", resumed=EvalRun.resumed + 1)).rowcount

    n = dbe.write(ctx.engine, tx)
    if n:
        log.info("%d interrupted evaluation run(s) queued again", n)
    return n


def _claim(ctx: Context) -> int | None:
    """Take the oldest queued run (queued -> running, so that no other worker takes it)."""

    def tx(s):
        run_id = s.scalar(select(EvalRun.id).where(EvalRun.status == "queued").order_by(EvalRun.id).limit(1))
        if run_id is None:
            return None
        taken = s.execute(update(EvalRun).where(EvalRun.id == run_id, EvalRun.status == "queued")
                          .values(status="running", heartbeat_at=utcnow())).rowcount  # fmt: skip
        return run_id if taken else None

    return dbe.write(ctx.engine, tx)


def _work(ctx: Context, runner: Runner) -> None:
    while (run_id := _claim(ctx)) is not None:
        try:
            execute(ctx, runner, run_id)
        except Exception as exc:  # noqa: BLE001 - a thread must record why it stopped, not die silently
            log.warning("evaluation run %d failed: %s", run_id, type(exc).__name__)
            _finish(ctx, run_id, "failed", error=f"{type(exc).__name__}: the run stopped; see the server log")


def _progress(ctx: Context, run_id: int, **values) -> None:
    dbe.write(ctx.engine, lambda s: s.execute(update(EvalRun).where(EvalRun.id == run_id)
                                              .values(heartbeat_at=utcnow(), **values)))  # fmt: skip


def _finish(ctx: Context, run_id: int, status: str, **values) -> None:
    _progress(ctx, run_id, status=status, finished_at=utcnow(), **values)


def stored_refs(s, pixel_hashes: list[str], spec: ModelSpec) -> dict[str, str]:
    """{pixel sha256: stored result JSON} of this model version on those pixels (one query per 500)."""
    out = {}
    for i in range(0, len(pixel_hashes), 500):
        rows = s.execute(select(Prediction.pixel_sha256, Prediction.result).where(
            Prediction.pixel_sha256.in_(pixel_hashes[i : i + 500]), Prediction.model_id == spec.model_id,
            Prediction.model_version == spec.version, Prediction.weights_sha256 == spec.weights_sha256,
        ))  # fmt: skip
        out.update({pixel: result for pixel, result in rows})
    return out


def load_item(ctx: Context, folder: str | None, item: eval_sets.Item) -> dicom_io.DecodedImage:
    """The item's pixels, checked against the pixel hash the set recorded; FileRejected with the reason."""
    if item.image_id is not None:
        with dbe.read(ctx.engine) as s:
            image = s.get(Image, item.image_id)
            key = image.file_sha256 if image is not None else None
        if key is None:
            raise importer.FileRejected("not_found", f"stored image {item.image_id} was deleted")
        path = ctx.store.path_for(key)
    else:
        path = Path(folder or "") / (item.file_name or "")
    img = importer.load_checked(path, max_bytes=ctx.settings.max_upload_bytes)
    if dicom_io.pixel_sha256(img) != item.pixel_sha256:
        raise importer.FileRejected("changed", "the file's pixels changed since the set was made")
    return img


def execute(ctx: Context, runner: Runner, run_id: int) -> RunInfo:
    """Do one run (also what the worker calls): reuse every stored result, compute the others and store them
    as the viewer would, writing progress as it goes."""
    run = get(ctx, run_id)
    info = eval_sets.get(ctx, run.set_id)
    spec = runner.registry.check(runner.registry.get(run.model_id, run.model_version))
    if spec.weights_sha256 != run.weights_sha256:
        _finish(ctx, run_id, "failed", error=f"{spec.ref} now has other weights than when the run was queued")
        return get(ctx, run_id)
    items = eval_sets.items(ctx, run.set_id)
    with dbe.read(ctx.engine) as s:
        have = stored_refs(s, [it.pixel_sha256 for it in items], spec)
    todo = [it for it in items if it.pixel_sha256 not in have]
    reused = len(items) - len(todo)
    missing: list[dict] = []
    _progress(ctx, run_id, n_done=reused, n_reused=reused, missing="[]")
    last = utcnow()
    for n, item in enumerate(todo, start=1):
        try:
            img = load_item(ctx, info.folder, item)
        except importer.FileRejected as exc:
            missing.append({"item": item.file_name or f"image {item.image_id}", "reason": exc.reason})
        else:
            x = analysis.model_input(img)
            result = analysis.run_task(runner, "classification", spec, x, ctx.store.put_bytes)
            analysis.store_result(ctx, "classification", spec, item.pixel_sha256, result, str(runner.device))
        now = utcnow()
        if (now - last).total_seconds() >= BEAT_S or n == len(todo):
            _progress(ctx, run_id, n_done=reused + n, missing=json.dumps(missing))
            last = now
    _finish(ctx, run_id, "done", n_done=len(items), missing=json.dumps(missing))
    log.info("evaluation run %d done: %d reused, %d computed, %d missing", run_id, reused, len(todo) - len(missing),
             len(missing))  # fmt: skip
    return get(ctx, run_id)


# --- what the metrics read ------------------------------------------------------------------------------------
def scores(ctx: Context, spec: ModelSpec, items: list[eval_sets.Item]) -> tuple[np.ndarray, np.ndarray]:
    """(scores N x labels of the spec, has: N bools) of this version on the items, from the stored results."""
    with dbe.read(ctx.engine) as s:
        have = stored_refs(s, [it.pixel_sha256 for it in items], spec)
    out = np.full((len(items), len(spec.labels)), np.nan)
    for i, it in enumerate(items):
        if (text := have.get(it.pixel_sha256)) is not None:
            probs = json.loads(text)["probabilities"]
            out[i] = [probs[label] for label in spec.labels]
    return out, ~np.isnan(out).any(axis=1)


def finished_versions(ctx: Context, set_id: int) -> list[str]:
    """The "id@version" of every version with a finished run on the set, newest run first."""
    return list(dict.fromkeys(r.ref for r in runs_of(ctx, set_id) if r.status == "done"))

