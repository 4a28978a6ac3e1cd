"""Settings shared by the app and the CLI: environment variables override an optional TOML settings file,
which overrides the defaults. Every setting is documented in README.md."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

REPO = Path(__file__).resolve().parent.parent


MAX_UPLOAD_MB_CAP = 4096


@dataclass(frozen=True)
class Settings:
    db_url: str
    data_dir: Path
    models_dir: Path
    max_upload_mb: int
    device: str
    settings_file: Path | None
    # PACS (DICOMweb): the URL without any user:password@ (taken out into the fields below); never repr'd.
    pacs_url: str | None = None
    pacs_user: str | None = field(default=None, repr=False)
    pacs_password: str | None = field(default=None, repr=False)
    pacs_timeout_s: float = 30.0
    pacs_max_instances: int = 100
    # Folders whose images and label files a researcher may name in the browser (evaluation sets): nothing else on
    # the server can be read that way.
    dataset_roots: tuple[Path, ...] = ()

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


class SettingsError(Exception):
    pass


def load(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    file_values: dict = {}
    path = Path(env["CXR_REVIEW_SETTINGS"]) if env.get("CXR_REVIEW_SETTINGS") else REPO / "cxr-review.toml"
    if path.is_file():
        try:
            file_values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from exc
    elif env.get("CXR_REVIEW_SETTINGS"):
        raise SettingsError(f"settings file {path} does not exist")

    def get(name: str, default: str) -> str:
        return env.get(f"CXR_REVIEW_{name.upper()}") or str(file_values.get(name, default))

    data_dir = Path(get("data_dir", str(REPO / "var" / "data"))).expanduser().resolve()
    device = get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise SettingsError(f"CXR_REVIEW_DEVICE must be auto, cpu or cuda, not {device!r}")
    try:
        max_upload_mb = int(get("max_upload_mb", "200"))
    except ValueError as exc:
        raise SettingsError("CXR_REVIEW_MAX_UPLOAD_MB must be a whole number of megabytes") from exc
    if not 1 <= max_upload_mb <= MAX_UPLOAD_MB_CAP:
        # 0 or a negative limit would refuse every file; a limit past the decoders' caps protects nothing.
        raise SettingsError(
            f"CXR_REVIEW_MAX_UPLOAD_MB must be between 1 and {MAX_UPLOAD_MB_CAP} (megabytes), not {max_upload_mb}"
        )
    db_url = get("db_url", f"sqlite:///{data_dir / 'cxr_review.db'}")
    try:
        make_url(db_url)
    except ArgumentError as exc:  # never echo the URL: it may hold a password
        raise SettingsError("CXR_REVIEW_DB_URL is not a valid SQLAlchemy database URL") from exc
    pacs_url, pacs_user, pacs_password = _pacs_url(get("pacs_url", "").strip())
    pacs_user = get("pacs_user", "") or pacs_user
    pacs_password = get("pacs_password", "") or pacs_password
    try:
        pacs_timeout_s = float(get("pacs_timeout_s", "30"))
        pacs_max_instances = int(get("pacs_max_instances", "100"))
    except ValueError as exc:
        raise SettingsError(
            "CXR_REVIEW_PACS_TIMEOUT_S must be a number of seconds and CXR_REVIEW_PACS_MAX_INSTANCES a whole number"
        ) from exc
    if not 0 < pacs_timeout_s <= 3600:
        raise SettingsError(
            f"CXR_REVIEW_PACS_TIMEOUT_S must be between 0 and 3600 seconds, not {pacs_timeout_s:g}"
        )
    if not 1 <= pacs_max_instances <= 100_000:
        raise SettingsError(
            f"CXR_REVIEW_PACS_MAX_INSTANCES must be between 1 and 100000, not {pacs_max_instances}"
        )
    return Settings(
        db_url=db_url,
        data_dir=data_dir,
        models_dir=Path(get("models_dir", str(REPO / "var" / "models"))).expanduser().resolve(),
        max_upload_mb=max_upload_mb,
        device=device,
        settings_file=path if path.is_file() else None,
        pacs_url=pacs_url,
        pacs_user=pacs_user or None,
        pacs_password=pacs_password or None,
        pacs_timeout_s=pacs_timeout_s,
        pacs_max_instances=pacs_max_instances,
        dataset_roots=_roots(
            file_values.get("dataset_roots")
            if not env.get("CXR_REVIEW_DATASET_ROOTS")
            else env["CXR_REVIEW_DATASET_ROOTS"],
            data_dir,
        ),
    )


def _roots(value, data_dir: Path) -> tuple[Path, ...]:
    """CXR_REVIEW_DATASET_ROOTS (folders joined by os.pathsep) or the settings file's `dataset_roots` (a list or
    such a string); default: <data dir>/datasets."""
    parts = value if isinstance(value, list) else str(value or "").split(os.pathsep)
    roots = tuple(Path(str(p)).expanduser().resolve() for p in parts if str(p).strip())
    return roots or (data_dir / "datasets",)


def _pacs_url(url: str) -> tuple[str | None, str, str]:
    """(the URL without user:password@, the user, the password) of CXR_REVIEW_PACS_URL. Errors never echo the URL: it
    may hold a password."""
    if not url:
        return None, "", ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError as exc:
        raise SettingsError("CXR_REVIEW_PACS_URL is not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("CXR_REVIEW_PACS_URL must be an http:// or https:// URL with a host name")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return clean, unquote(parts.username or ""), unquote(parts.password or "")
