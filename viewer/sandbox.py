"""Decoding in worker processes with a memory and a time limit.

Hostile pixel data can make a decoder allocate gigabytes or run for minutes; that must cost a worker process,
not the Streamlit server or the CLI. `run(fn, *args, memory_bytes=..., seconds=...)` calls a module-level
function in a worker:

- memory: for the call, the worker's RLIMIT_AS is its address space once started (interpreter and PRELOAD
  imported) plus `memory_bytes`. An allocation past it fails inside the decoder (MemoryError, or the
  decoder's own out-of-memory error), and `run` raises LimitExceeded("memory"). Heap that malloc kept from
  earlier calls counts as used, and can be reused without a new mapping: a call gets at most `memory_bytes`
  plus RETIRE_GROWTH_BYTES, since a worker that kept more than that exits after replying, as does one whose
  call ran out of memory (glibc may be left with odd mappings).
- time: past `seconds` of CPU time the worker's profiling timer ends it (SIGPROF), and past WALL_FACTOR x that
  plus WALL_SLACK_S of wall-clock time the caller kills it; either way it is replaced, and `run` raises
  LimitExceeded("time"). The timer also ends a worker whose caller died mid-call.
- a worker that dies (a decoder crash) raises WorkerFailed; the next call starts a fresh one.

Workers are fresh interpreters (`python -m viewer.sandbox`), never forks of a threaded server, so they start
the same way under Streamlit, the CLI and pytest. They are reused: at most POOL_SIZE live at once, each serving
one call at a time; callers on other threads wait for a free one. Each worker imports PRELOAD at start, so
calls pay neither the start nor the imports.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from multiprocessing.connection import Connection
from pathlib import Path

POOL_SIZE = max(1, min(4, os.cpu_count() or 1))
RETIRE_GROWTH_BYTES = 64 << 20  # decoding the sample set leaves a worker at most 6 MB above its start
START_SECONDS = 60.0  # a cold start on a busy 2-core machine takes ~1 s; this only catches a broken install
PRELOAD = (
    "viewer.dicom_io", "pydicom.pixels.decoders.gdcm", "pydicom.pixels.decoders.pylibjpeg",
    "pydicom.pixels.decoders.pillow", "pydicom.pixels.decoders.rle",
)
_OOM_TEXT = re.compile(
    r"out of (free )?memory|bad_alloc|cannot allocate|memory allocation failed|insufficient memory|failed to allocate",
    re.I,
)
# `seconds` is CPU time, counted in the worker (ITIMER_PROF), so a busy machine does not turn a slow decode into
# a rejection; the wall clock only catches a worker that stopped running (blocked, or starved for this long).
WALL_FACTOR, WALL_SLACK_S = 4.0, 5.0


class LimitExceeded(Exception):
    def __init__(self, kind: str):  # "memory" | "time"
        super().__init__(kind)
        self.kind = kind


class WorkerFailed(Exception):
    """The worker died during the call or could not be started."""


def run(fn, *args, memory_bytes: int, seconds: float):
    """fn(*args) in a worker: fn a module-level function, arguments, result and exceptions picklable; the
    exceptions fn raises are raised here."""
    return _pool().run(fn, args, memory_bytes, seconds)


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) says an allocation failed. Decoders report it in
    their own words, and pydicom folds every plugin's error into one RuntimeError."""
    while exc is not None:
        if isinstance(exc, MemoryError) or _OOM_TEXT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def captured_output():
    """What C libraries write to stderr and what Python warns, during the block: a list of lines filled on
    exit. Redirects file descriptor 2, so only for a worker's single-threaded call."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("ascii", "replace").splitlines())
            lines.extend(str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------------------
# Caller side


class _Worker:
    def __init__(self):
        root = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            # One decode at a time per worker: no BLAS / OpenMP thread pools, few malloc arenas (each reserves
            # address space that would count against the limit).
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
        }
        # Its own session: a Ctrl-C in the terminal is the parent's to handle, not the workers'.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "viewer.sandbox", *PRELOAD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )
        self._to = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self._from = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        try:
            ready = self._from.poll(START_SECONDS) and self._from.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self.kill()
            raise WorkerFailed("the decoder process could not be started")

    def call(self, fn, args, memory_bytes: int, seconds: float):
        """The worker's reply (kind, value, retiring), kind "ok" / "raised" / "memory"; kills the worker on a
        timeout or when it died."""
        try:
            self._to.send((fn, args, memory_bytes, seconds))
            if not self._from.poll(WALL_FACTOR * seconds + WALL_SLACK_S):
                self.kill()
                raise LimitExceeded("time")
            return self._from.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            code = self.proc.returncode
            if code == -signal.SIGPROF:  # its CPU-time budget ran out
                raise LimitExceeded("time") from exc
            what = signal.strsignal(-code) if code < 0 else f"exit status {code}"
            raise WorkerFailed(f"the decoder process died ({what})") from exc

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self._to.close()
        self._from.close()


class _Pool:
    def __init__(self):
        self.pid = os.getpid()
        self._slots = threading.BoundedSemaphore(POOL_SIZE)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def run(self, fn, args, memory_bytes, seconds):
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is not None and worker.proc.poll() is not None:  # it died while idle
                worker.kill()
                worker = None
            worker = worker or _Worker()
            reply = None
            try:
                reply = worker.call(fn, args, memory_bytes, seconds)
            finally:
                if reply is not None and not reply[2]:
                    with self._lock:
                        self._idle.append(worker)
                elif worker.proc.returncode is None:  # retiring, or in an unknown state after an error here
                    worker.kill()
        kind, value, _ = reply
        if kind == "memory":
            raise LimitExceeded("memory")
        if kind == "raised":
            raise value
        return value

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():  # a forked child must not share its parent's workers
            _POOL = _Pool()
        return _POOL


@atexit.register
def _close() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


# ---------------------------------------------------------------------------------------------------------
# Worker side


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _serve() -> None:
    requests = Connection(0, writable=False)
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # what a library prints to stdout must not corrupt the replies
    for name in sys.argv[1:]:
        with contextlib.suppress(ImportError):  # a decoder that is not installed is simply not used
            importlib.import_module(name)
    replies.send("ready")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    baseline = _address_space()
    while True:
        try:
            fn, args, memory_bytes, seconds = requests.recv()
        except EOFError:  # the caller closed the pipe or exited
            return
        limit = baseline + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        signal.setitimer(signal.ITIMER_PROF, seconds)  # SIGPROF's default action ends this process
        try:
            reply = ("ok", fn(*args))
        except Exception as exc:
            reply = ("memory", None) if out_of_memory(exc) else ("raised", exc)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        retire = reply[0] == "memory" or _address_space() > baseline + RETIRE_GROWTH_BYTES
        try:
            replies.send((*reply, retire))
        except Exception as exc:  # an exception that does not pickle
            replies.send(("raised", RuntimeError(f"{type(reply[1]).__name__} (not picklable: {type(exc).__name__})"), retire))
        if retire:
            return


if __name__ == "__main__":
    _serve()
