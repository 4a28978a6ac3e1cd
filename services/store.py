"""Content-addressed image store: each file is kept once, under its sha256, outside the database. Patient
data: folders 0700 and files 0600, readable by the service user only."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
DIR_MODE, FILE_MODE = 0o700, 0o600


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE, fsync: bool = False) -> None:
    """Write then rename: a crash or an interrupted run never leaves a half-written file under `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> None:
    """Create `path` as 0700 (missing parents as usual), or tighten an existing folder to 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:  # an older folder, or a umask that took bits away
        os.chmod(path, DIR_MODE)


class ImageStore:
    def __init__(self, root: Path):
        self.data_dir = Path(root)
        self.root = self.data_dir / "objects"
        try:
            fresh_root = not self.root.exists()
            private_dir(self.data_dir)
            if not fresh_root and stat.S_IMODE(self.root.stat().st_mode) != DIR_MODE:
                self._tighten()  # a store written before files were private: once, then the root says so
            private_dir(self.root)
        except OSError as exc:  # not ours to change (another owner, a read-only mount): say so, files still work
            log.warning("cannot make the image store private (%s)", type(exc).__name__)

    def _tighten(self) -> None:
        for folder, dirs, files in os.walk(self.root):
            for d in dirs:
                os.chmod(os.path.join(folder, d), DIR_MODE)
            for f in files:
                os.chmod(os.path.join(folder, f), FILE_MODE)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path_for(sha)
        if target.exists():
            return sha
        private_dir(target.parent)
        write_atomic(target, data, fsync=True)  # objects never change
        return sha
