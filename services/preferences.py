"""A reader's settings that outlive a session: the viewer's AI switch stays as the reader left it, in any browser."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from db import accounts
from db import engine as dbe

AI_OVERLAYS = "ai_overlays"


def flag(engine: Engine, user_id: int, key: str, default: bool = False) -> bool:
    with dbe.read(engine) as s:
        value = accounts.preference(s, user_id, key)
    return default if value is None else value == "on"


def set_flag(engine: Engine, user_id: int, key: str, on: bool) -> None:
    dbe.write(engine, lambda s: accounts.set_preference(s, user_id, key, "on" if on else "off"))
