"""What the app and the CLI share: settings, the database engine, the image store."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from db import engine as dbe
from services import settings as settings_mod
from services.store import ImageStore


@dataclass(frozen=True)
class Context:
    settings: settings_mod.Settings
    engine: Engine
    store: ImageStore


def build(settings: settings_mod.Settings | None = None, *, check_schema: bool = True) -> Context:
    settings = settings or settings_mod.load()
    engine = dbe.make_engine(settings.db_url)
    if check_schema:
        dbe.check_current(engine)
    return Context(settings=settings, engine=engine, store=ImageStore(settings.data_dir))
