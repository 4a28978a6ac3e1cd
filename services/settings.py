"""Settings shared by the app and the CLI: environment variables override an optional TOML settings file,
which overrides the defaults. Every setting is documented in README.md."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    db_url: str
    data_dir: Path
    models_dir: Path
    max_upload_mb: int
    device: str
    settings_file: Path | None

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
    return Settings(
        db_url=get("db_url", f"sqlite:///{data_dir / 'cxr_review.db'}"),
        data_dir=data_dir,
        models_dir=Path(get("models_dir", str(REPO / "var" / "models"))).expanduser().resolve(),
        max_upload_mb=max_upload_mb,
        device=device,
        settings_file=path if path.is_file() else None,
    )
