"""Helpers for the servers tests start themselves (Streamlit, Orthanc): a free loopback port, and waiting until one
answers."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open together while they are picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until_answers(
    proc: subprocess.Popen, answers: Callable[[], bool], timeout_s: float, what: str
) -> None:
    """Return once `answers()` is true (an OSError in it counts as not yet); RuntimeError when `proc` exits first or
    TimeoutError after `timeout_s`, `what` naming the server and where its log is."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if answers():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not answer within {timeout_s} s")
        time.sleep(0.1)
