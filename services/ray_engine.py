"""The Ray engine of `cxr-review infer` and `cxr-review analyse`: the same per-image code as the local engine
(services.infer.infer_image, services.analysis.analyse), spread over a pool of Ray actors with Ray Data.

- Reading (the checks and decoding of import) runs as Ray tasks; the models run in `map_batches` on a fixed
  pool of actors, each holding one copy of every model it runs, loaded through the registry (sha256 checked).
- Without an address a local Ray is started on this machine (no dashboard, no usage statistics, at most
  `num_cpus` CPUs) and stopped at the end, also on an error or Ctrl-C. With an address, the cluster there is
  used; one that does not answer is an error (RayUnavailable), never a silent fall-back to the local engine.
- Inputs, the output folder, the models folder (and for `analyse` the database and image store) must be
  reachable under the same paths from every node of a cluster: actors read and write them directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from inference.registry import Registry
from inference.types import ModelSpec
from services import analysis, importer, infer, threshold_sets
from services.settings import Settings
from services.store import write_atomic

RAY_PIN = "ray[data]==2.60.0"  # as in requirements.lock
SUMMARY = "run_summary.parquet"
CONNECT_TIMEOUT_S = 5.0


class RayUnavailable(Exception):
    """Ray cannot be used (not installed, no cluster at the address): nothing was run."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks it)
    except ImportError as exc:
        raise RayUnavailable(
            f"--engine ray needs Ray, which is not installed here ({exc}); install {RAY_PIN} "
            "(pinned in requirements.lock), or use --engine local"
        ) from exc
    return ray


def _check_answers(address: str) -> None:
    """A TCP connection to HOST:PORT within CONNECT_TIMEOUT_S, else RayUnavailable: Ray itself would keep
    retrying for a long time before giving up."""
    if address == "auto":
        return  # Ray looks for a cluster started on this machine and says when there is none
    if address.startswith("ray://"):
        # The Ray client needs grpcio, which the pinned set does not have; the driver joins the cluster instead.
        raise RayUnavailable(f"--ray-address {address}: the Ray client (ray://) is not supported; give the "
                             "cluster's HOST:PORT (its GCS, 6379 by default) or auto on one of its nodes")  # fmt: skip
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailable(f"--ray-address {address}: expected HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayUnavailable(
            f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__}); nothing was run "
            "(the local engine is not used instead)"
        ) from exc


def check(address: str | None) -> None:
    """RayUnavailable now, before any work, when Ray is not installed or nothing answers at `address`."""
    _import_ray()
    if address:
        _check_answers(address)


@contextlib.contextmanager
def session(address: str | None = None, num_cpus: int | None = None):
    """Ray connected for the block: the cluster at `address`, else a local Ray of at most `num_cpus` CPUs
    (default: this machine's), started here and stopped when the block ends, however it ends."""
    ray = _import_ray()
    # Set before Ray starts: the processes it starts inherit it, and nothing is reported anywhere.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if address:
        _check_answers(address)
        kwargs: dict = {"address": address}
    else:
        cpus = min(num_cpus or os.cpu_count() or 1, os.cpu_count() or 1)
        kwargs = {"num_cpus": max(cpus, 1), "include_dashboard": False, "object_store_memory": 512 * 2**20}
    try:
        ray.init(**kwargs, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError here
        ray.shutdown()
        where = f"at {address}" if address else "on this machine"
        raise RayUnavailable(f"Ray could not start {where}: {exc}; nothing was run") from exc
    # A kill (SIGTERM) ends the block like Ctrl-C does, so that the local Ray is stopped too.
    previous = signal.signal(signal.SIGTERM, _exit_on_term) if _main_thread() else None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # outputs come back in the order of the inputs
        ctx.enable_progress_bars = False  # our own bar, one line on stderr
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no INFO lines between the progress bar's
        yield ray
    finally:
        ray.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def pool_plan(ray, device: str, actors: int | None) -> tuple[int, dict]:
    """(pool size, what each actor asks for): on GPUs one GPU and one CPU per actor, one actor per GPU; on
    CPUs one CPU per actor, one actor per CPU. Either way one CPU is left for reading the inputs: without it
    the reading tasks are never scheduled and the run waits for ever."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if device == "cuda" and gpus == 0:
        raise RayUnavailable("--device cuda: the Ray cluster has no GPU")
    if cpus < 2:
        engine = "GPU" if use_gpu else "CPU"
        raise RayUnavailable(
            f"the Ray cluster has {cpus} CPU; the {engine} engine needs 2 (an actor, and reading)"
        )
    most = min(gpus, cpus - 1) if use_gpu else cpus - 1
    if actors is not None and actors > most:
        # More actors than there is room for would wait for resources for ever (or starve the reading).
        have = f"{cpus} CPU(s), one of them for reading"
        have = f"{gpus} GPU(s) and {have}" if use_gpu else have
        raise RayUnavailable(f"--actors {actors}: the Ray cluster has room for {most} ({have})")
    return actors or most, {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0}


def _pool(ray, size: int, asks: dict) -> dict:
    """map_batches arguments of a fixed pool of `size` actors, each asking for `asks`. An actor that dies
    fails the run with its error (no restart): its model copy and the image it held are not retried blindly.
    This also keeps Ray Data from fusing the reading tasks into the actors, so reading has its own CPU."""
    return {"compute": ray.data.ActorPoolStrategy(size=size), "max_restarts": 0, **asks}


def _map_actors(ds, actor, args: tuple, ray, size: int, asks: dict):
    with warnings.catch_warnings():  # max_restarts has no named parameter in the pinned Ray yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return ds.map_batches(actor, fn_constructor_args=args, batch_size=1, batch_format="pandas",
                              **_pool(ray, size, asks))  # fmt: skip


def _set_threads(threads: int | None) -> None:
    """Torch threads of an actor: `threads`, else the CPUs Ray gave it (OMP_NUM_THREADS). With the same number
    of threads as the local engine the outputs are bit-identical; with another, the convolutions add up in
    another order (probabilities move by ~1e-7, a few boundary pixels of a mask may change label)."""
    import torch

    torch.set_num_threads(threads or max(int(os.environ.get("OMP_NUM_THREADS", "1")), 1))


def _progress(total: int, what: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="image", file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------
# infer


def _read_row(row: dict, max_bytes: int) -> dict:
    """A Ray task: the import's checks and decoding of one input; the decoded image travels pickled."""
    path = Path(row["file"])
    try:
        img = importer.load_checked(path, max_bytes=max_bytes)
    except importer.FileRejected as exc:
        return row | {"image": b"", "code": exc.code, "reason": exc.reason}
    return row | {"image": pickle.dumps(img), "code": "", "reason": ""}


class _InferActor:
    """One Runner and one copy of each chosen model per actor, loaded (sha256 checked) before the first image."""

    def __init__(
        self, models_dir: str, device: str, picked: list[str], force, out_dir: str, threads: int | None
    ):
        from inference.runner import Runner

        _set_threads(threads)
        self.runner = Runner(Registry(Path(models_dir)), device)
        specs = [self.runner.registry.resolve(ref) for ref in picked]
        self.chosen, self.unavailable = analysis.specs_for(self.runner.registry, specs)
        gate, _ = analysis.gate_spec(self.runner.registry)
        # A model that fails to load here is reported per image by infer_image, as in the local engine.
        for spec in [*self.chosen.values(), *([gate] if gate else [])]:
            with contextlib.suppress(Exception):
                self.runner.load(spec)
        self.force, self.out_dir = force, Path(out_dir)

    def __call__(self, batch):
        import pandas as pd

        rows = []
        for row in batch.to_dict("records"):
            out = {"file": row["file"], "code": row["code"], "reason": row["reason"], "out": "", "doc": ""}
            if not row["image"]:
                rows.append(out | {"status": "rejected"})
                continue
            img = pickle.loads(row["image"])
            # As the local engine: --metadata gives PNG/JPEG files their view; a DICOM file has its own.
            view = (row["view"] or None) if img.header.source_format != "dicom" else None
            force = (lambda spec: self.force) if self.force is not None else None
            doc = infer.infer_image(self.runner, self.chosen, self.unavailable, img, row["file"], self.out_dir,
                                    row["stem"], view, force)  # fmt: skip
            target = self.out_dir / f"{row['stem']}.json"
            text = json.dumps(doc, indent=2) + "\n"
            write_atomic(target, text.encode(), mode=infer.OUT_MODE)
            rows.append(out | {"status": "done", "out": str(target), "doc": text})
        return pd.DataFrame(rows, columns=["file", "status", "code", "reason", "out", "doc"])


def summary_row(line: infer.InferLine, doc: dict | None) -> dict:
    """One row of the run's Parquet summary: the file, its status, the models (id, version, weights sha256),
    the timings and the findings."""
    doc = doc or {}
    gate = doc.get("quality_gate") or {}
    return {
        "file": line.file,
        "status": line.status,
        "code": line.code,
        "reason": line.reason,
        "out": line.out,
        "quality_gate_passed": gate.get("passed"),
        "models": [
            {"id": m["id"], "version": m["version"], "weights_sha256": m["weights_sha256"]}
            for m in doc.get("models", [])
        ],
        "models_ms": (doc.get("timings_ms") or {}).get("total"),
        "elapsed_ms": doc.get("elapsed_ms"),
        "findings": [
            {"label": f["label"], "probability": f["probability"], "positive": f["positive"]}
            for f in doc.get("findings") or []
        ],
        "ctr": doc.get("ctr"),
    }


def write_summary(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    write_atomic(path, sink.getvalue().to_pybytes(), mode=infer.OUT_MODE)


def infer_paths(
    ray,
    s: Settings,
    paths: Iterable[str | Path],
    out_dir: Path,
    *,
    device: str,
    picked: Iterable[ModelSpec] = (),
    metadata: dict[str, dict] | None = None,
    in_force: Callable[[ModelSpec], threshold_sets.InForce] | None = None,
    actors: int | None = None,
    threads: int | None = None,
) -> Iterator[infer.InferLine]:
    """services.infer.infer_paths on a Ray session (`session()`): one InferLine per input, in input order, as
    each comes back; afterwards `<out_dir>/run_summary.parquet`, one row per input, and a progress bar on
    stderr meanwhile."""
    out_dir.mkdir(parents=True, exist_ok=True)
    picked = list(picked)
    registry = Registry(s.models_dir)
    chosen, _ = analysis.specs_for(registry, picked)
    # The thresholds in force come from the app's database, read here once: actors need no database.
    force = in_force(chosen["classification"]) if in_force and "classification" in chosen else None
    stems, items = infer.Stems(), []
    for i, path in enumerate(infer.input_files(paths, out_dir)):
        view = (metadata or {}).get(path.name, {}).get("view_position") or ""
        items.append({"i": i, "file": str(path), "stem": stems.take(path), "view": view})
    if not items:
        write_summary(out_dir / SUMMARY, [])
        return
    size, asks = pool_plan(ray, device, actors)
    actor_device = "cuda" if asks["num_gpus"] else "cpu"
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * size + 4))
    ds = ds.map(_read_row, fn_kwargs={"max_bytes": s.max_upload_bytes}, num_cpus=1)
    args = (str(s.models_dir), actor_device, [spec.ref for spec in picked], force, str(out_dir), threads)
    ds = _map_actors(ds, _InferActor, args, ray, size, asks)
    rows = []
    with _progress(len(items), f"infer on Ray ({size} actor{'s' * (size > 1)})") as bar:
        for r in ds.iter_rows():
            if r["status"] == "done":
                line = infer.InferLine(file=r["file"], status="done", out=r["out"])
                doc = json.loads(r["doc"])
            else:
                line = infer.InferLine(file=r["file"], status="rejected", reason=r["reason"], code=r["code"])
                doc = None
            rows.append(summary_row(line, doc))
            bar.update(1)
            yield line
    write_summary(out_dir / SUMMARY, rows)


# ---------------------------------------------------------------------------------------------------------
# analyse


class _AnalyseActor:
    """analysis.analyse on stored images, as the viewer runs it: the app's database and image store."""

    def __init__(self, s: Settings, device: str, threads: int | None):
        from inference.runner import Runner
        from services import context

        _set_threads(threads)
        self.ctx = context.build(s)
        self.runner = Runner(Registry(s.models_dir), device)

    def __call__(self, batch):
        import pandas as pd

        from services import precompute

        out = [precompute.analyse_one(self.ctx, self.runner, row) for row in batch.to_dict("records")]
        return pd.DataFrame(out, columns=["id", "outcome", "detail"])


def analyse_images(
    ray,
    s: Settings,
    images: list[dict],
    *,
    device: str,
    actors: int | None = None,
    threads: int | None = None,
):
    """(image id, outcome, detail) per image that is not stored yet, computed on a Ray actor pool."""
    size, asks = pool_plan(ray, device, actors)
    actor_device = "cuda" if asks["num_gpus"] else "cpu"
    # The PACS credentials stay here: actors need the database, the image store and the models only.
    s = dataclasses.replace(s, pacs_url=None, pacs_user=None, pacs_password=None, device=actor_device)
    ds = ray.data.from_items(images, override_num_blocks=min(len(images), 4 * size + 4))
    ds = _map_actors(ds, _AnalyseActor, (s, actor_device, threads), ray, size, asks)
    for r in ds.iter_rows():
        yield int(r["id"]), r["outcome"], r["detail"]
