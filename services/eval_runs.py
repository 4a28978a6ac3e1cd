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
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select, text, update

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
HEARTBEAT_S = 5.0  # while an item runs, a timer thread beats this often (well under STALE_S)


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
        # a second click while a run is going would queue the same work twice
        active = s.scalars(select(EvalRun).where(EvalRun.set_id == set_id, EvalRun.status.in_(("queued", "running")))).all()
        if busy := sorted({f"{r.model_id}@{r.model_version}" for r in active} & {sp.ref for sp in specs}):
            raise RunRefused(f"{', '.join(busy)} already has a run going on this set; wait for it to finish")
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


def results_stamp(runs: list[RunInfo], ref: str, registry) -> tuple:
    """What a version's cached metrics on a set depend on: its finished runs and the weights installed under
    its id@version now (other weights under the same name must not be served the old figures)."""
    try:
        sha = registry.resolve(ref).weights_sha256
    except KeyError:
        sha = None
    return (*(r.id for r in runs if r.ref == ref and r.status == "done"), sha)


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


class RunLost(Exception):
    """The run is no longer this worker's (another process claimed it after a requeue): stop, write nothing."""


def db_now(s) -> dt.datetime:
    """The database's clock (timezone-aware UTC): heartbeats and their staleness are measured on one clock,
    whatever the clocks of the server processes say. SQLite's CURRENT_TIMESTAMP has whole seconds only, hence
    strftime('%f') there."""
    if s.get_bind().dialect.name == "sqlite":
        raw = s.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
        return dt.datetime.fromisoformat(raw).replace(tzinfo=dt.UTC)
    return s.scalar(select(func.now())).astimezone(dt.UTC)


def ensure_worker(ctx: Context, runner: Runner) -> bool:
    """Start this process's worker for the database when queued work (or a run abandoned by a stopped process)
    waits and none is working; True when one is working now. A busy database answers False (the next call,
    e.g. the page's next refresh, tries again)."""
    key = str(ctx.engine.url)
    with _lock:  # a worker decides to stop under this lock too: no queued run is left without one
        alive = (t := _workers.get(key)) is not None and t.is_alive()
        if alive:
            return True
        try:
            requeue_abandoned(ctx)
        except dbe.DatabaseBusy:
            log.info("database busy: interrupted evaluation runs are looked for on the next call")
        with dbe.read(ctx.engine) as s:
            waiting = s.scalar(select(EvalRun.id).where(EvalRun.status == "queued").limit(1))
        if waiting is None:
            return False
        t = threading.Thread(target=_work, args=(ctx, runner), name="eval-runs", daemon=True)
        _workers[key] = t
        t.start()
        return True


def requeue_abandoned(ctx: Context, now: dt.datetime | None = None) -> int:
    """Queue again the runs left "running" whose heartbeat stopped more than STALE_S ago by the database's
    clock (their process stopped); they go on where they stopped, and their old worker token no longer counts.
    Returns how many."""

    def stale(s):
        cutoff = (now or db_now(s)) - dt.timedelta(seconds=STALE_S)
        return (EvalRun.status == "running") & ((EvalRun.heartbeat_at < cutoff) | EvalRun.heartbeat_at.is_(None))

    with dbe.read(ctx.engine) as s:  # most page views find none: no write for them
        if s.scalar(select(EvalRun.id).where(stale(s)).limit(1)) is None:
            return 0

    def tx(s):
        return s.execute(
            update(EvalRun).where(stale(s)).values(status="queued", worker_token=None, resumed=EvalRun.resumed + 1)
        ).rowcount

    n = dbe.write(ctx.engine, tx)
    if n:
        log.info("%d interrupted evaluation run(s) queued again", n)
    return n


def _claim(ctx: Context) -> tuple[int, str] | None:
    """Take the oldest queued run (queued -> running, with a fresh worker token: only its holder writes to it)."""
    token = uuid.uuid4().hex

    def tx(s):
        run_id = s.scalar(select(EvalRun.id).where(EvalRun.status == "queued").order_by(EvalRun.id).limit(1))
        if run_id is None:
            return None
        taken = s.execute(update(EvalRun).where(EvalRun.id == run_id, EvalRun.status == "queued")
                          .values(status="running", worker_token=token, heartbeat_at=db_now(s))).rowcount  # fmt: skip
        return (run_id, token) if taken else None

    return dbe.write(ctx.engine, tx)


def _next(ctx: Context) -> tuple[int, str] | None:
    """The next run to do, or None, and then this worker is gone: decided under the lock that ensure_worker
    takes, so a run queued meanwhile finds either this worker still claiming or none (and starts one). A busy
    database ends the worker too; the page's next refresh starts another."""
    with _lock:
        try:
            claimed = _claim(ctx)
        except dbe.DatabaseBusy:
            log.info("database busy: the evaluation worker stops, the next page refresh starts another")
            claimed = None
        if claimed is None and _workers.get(str(ctx.engine.url)) is threading.current_thread():
            del _workers[str(ctx.engine.url)]
        return claimed


def _work(ctx: Context, runner: Runner) -> None:
    while (claimed := _next(ctx)) is not None:
        run_id, token = claimed
        try:
            execute(ctx, runner, run_id, token)
        except RunLost:
            log.warning("evaluation run %d was taken over by another worker; this one stopped", run_id)
        except Exception as exc:  # noqa: BLE001 - a thread must record why it stopped, not die silently
            log.warning("evaluation run %d failed: %s", run_id, type(exc).__name__)
            try:
                _Owner(ctx, run_id, token).write(status="failed", finished_at=utcnow(),
                                                 error=f"{type(exc).__name__}: the run stopped; see the server log")  # fmt: skip
            except (RunLost, dbe.DatabaseBusy):  # not ours any more, or left "running": requeued when stale
                log.warning("evaluation run %d: its failure could not be recorded", run_id)


class _Owner:
    """Writes to one run as the holder of its worker token: each write (with a heartbeat on the database's
    clock) only WHERE id and token match, RunLost when they no longer do. A timer thread beats while an item
    runs, so a slow item does not look abandoned; progress is best-effort (a busy database leaves it for the
    next beat), the end is not."""

    def __init__(self, ctx: Context, run_id: int, token: str):
        self.ctx, self.run_id, self.token = ctx, run_id, token
        self.pending: dict = {}
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def write(self, **values) -> None:
        def tx(s):
            mine = (EvalRun.id == self.run_id) & (EvalRun.worker_token == self.token) & (EvalRun.status == "running")
            return s.execute(update(EvalRun).where(mine).values(heartbeat_at=db_now(s), **values)).rowcount

        if self.lost.is_set() or not dbe.write(self.ctx.engine, tx):
            self.lost.set()
            raise RunLost(self.run_id)

    def progress(self, **values) -> None:
        """Record progress now, or where the database is busy, with the next beat; RunLost when not ours."""
        with self._guard:
            self.pending |= values
            values = dict(self.pending)
        try:
            self.write(**values)
        except dbe.DatabaseBusy:
            log.info("evaluation run %d: progress left for the next beat (database busy)", self.run_id)
            return
        with self._guard:
            if all(self.pending.get(k) == v for k, v in values.items()):
                self.pending.clear()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.progress()
            except RunLost:
                return
            except Exception as exc:  # noqa: BLE001 - a beat that failed is tried again at the next one
                log.info("evaluation run %d: heartbeat not written (%s)", self.run_id, type(exc).__name__)

    def __enter__(self) -> _Owner:
        self._thread = threading.Thread(target=self._beat, name=f"eval-run-{self.run_id}-beat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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


def item_name(item: eval_sets.Item) -> str:
    """How a run's report names an item: its file, its stored image, or that the image was deleted."""
    if item.file_name is not None:
        return item.file_name
    return f"image {item.image_id}" if item.image_id is not None else "image no longer in the store"


def load_item(ctx: Context, info: eval_sets.SetInfo, item: eval_sets.Item) -> dicom_io.DecodedImage:
    """The item's pixels, checked against the pixel hash the set recorded; FileRejected with the reason. A
    folder set's file is read only while it still lies under a dataset folder (links followed)."""
    if info.kind == "database":
        key = None
        if item.image_id is not None:
            with dbe.read(ctx.engine) as s:
                image = s.get(Image, item.image_id)
                key = image.file_sha256 if image is not None else None
        if key is None:  # deleted: the item's image id was set to null, or the row is gone
            raise importer.FileRejected("not_found", "image no longer in the store")
        path = ctx.store.path_for(key)
    else:
        path = Path(info.folder or "") / (item.file_name or "")
        if not item.file_name or not eval_sets.under_roots(path, ctx.settings.dataset_roots):
            raise importer.FileRejected("outside", "the file does not lie under a dataset folder (any more)")
    img = importer.load_checked(path, max_bytes=ctx.settings.max_upload_bytes)
    if dicom_io.pixel_sha256(img) != item.pixel_sha256:
        raise importer.FileRejected("changed", "the file's pixels changed since the set was made")
    return img


def execute(ctx: Context, runner: Runner, run_id: int, token: str) -> RunInfo:
    """Do one run claimed with `token` (what the worker calls): reuse every stored result, compute the others
    and store them as the viewer would, writing progress as it goes. RunLost where another worker took it."""
    run = get(ctx, run_id)
    info = eval_sets.get(ctx, run.set_id)
    owner = _Owner(ctx, run_id, token)
    spec = runner.registry.check(runner.registry.get(run.model_id, run.model_version))
    if spec.weights_sha256 != run.weights_sha256:
        owner.write(status="failed", finished_at=utcnow(),
                    error=f"{spec.ref} now has other weights than when the run was queued")  # fmt: skip
        return get(ctx, run_id)
    items = eval_sets.items(ctx, run.set_id)
    with dbe.read(ctx.engine) as s:
        have = stored_refs(s, [it.pixel_sha256 for it in items], spec)
    todo = [it for it in items if it.pixel_sha256 not in have]
    reused = len(items) - len(todo)
    missing: list[dict] = []
    with owner:
        owner.progress(n_done=reused, n_reused=reused, missing="[]")
        last = utcnow()
        for n, item in enumerate(todo, start=1):
            if owner.lost.is_set():
                raise RunLost(run_id)
            try:
                img = load_item(ctx, info, item)
            except importer.FileRejected as exc:
                missing.append({"item": item_name(item), "reason": exc.reason})
            else:
                x = analysis.model_input(img)
                result = analysis.run_task(runner, "classification", spec, x, ctx.store.put_bytes)
                analysis.store_result(ctx, "classification", spec, item.pixel_sha256, result, str(runner.device))
            now = utcnow()
            if (now - last).total_seconds() >= BEAT_S or n == len(todo):
                owner.progress(n_done=reused + n, missing=json.dumps(missing))
                last = now
    owner.write(status="done", finished_at=utcnow(), n_done=len(items), n_reused=reused, missing=json.dumps(missing))
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



def known_versions(registry, refs: list[str]) -> tuple[list[str], list[str]]:
    """(the versions among `refs` the registry still has, those it no longer has): the metrics of a version need
    its spec (labels, weights), so the pages offer only the first and name the others."""
    known, gone = [], []
    for ref in refs:
        try:
            registry.resolve(ref)
        except KeyError:
            gone.append(ref)
        else:
            known.append(ref)
    return known, gone
