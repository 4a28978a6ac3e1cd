"""`cxr-review analyse`: the AI results of stored studies computed into the database ahead of reading (for
instance overnight), exactly as the viewer computes and stores them (services.analysis.analyse, quality gate
first), so that the viewer's first visit is a cached one. What is stored already is skipped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from sqlalchemy import select

from db import engine as dbe
from db import repo
from db.models import Image, Study
from inference.runner import Runner
from services import analysis
from services.context import Context

OUTCOMES = ("computed", "stored_already", "refused_by_gate", "failed")


class UnknownStudy(Exception):
    """A STUDY argument that names no stored study (nothing is computed then)."""


def select_images(ctx: Context, studies: Iterable[str], everything: bool) -> list[dict]:
    """{id, pixel_sha256, file_sha256} of every image of the given studies (each a study id or a
    StudyInstanceUID), or of all stored studies; UnknownStudy before anything runs when one is not stored."""
    with dbe.read(ctx.engine) as s:
        if everything:
            ids = list(s.scalars(select(Study.id).order_by(Study.id)))
        else:
            ids, missing = [], []
            for ref in studies:
                sid = int(ref) if ref.isdigit() else None
                study = repo.get_study(s, sid) if sid is not None else None
                study = study or s.scalar(select(Study).where(Study.study_instance_uid == ref))
                (ids.append(study.id) if study else missing.append(ref))
            if missing:
                raise UnknownStudy(f"no stored study with the id or StudyInstanceUID {', '.join(missing)}")
        rows = s.execute(
            select(Image.id, Image.pixel_sha256, Image.file_sha256)
            .where(Image.study_id.in_(ids))
            .order_by(Image.study_id, Image.id)
        )
        return [{"id": r.id, "pixel_sha256": r.pixel_sha256, "file_sha256": r.file_sha256} for r in rows]


def not_stored(ctx: Context, runner: Runner, images: list[dict]) -> list[dict]:
    """The images whose results (of the active model versions, the gate's verdict included) are not all
    stored: the viewer would compute something on them."""
    return [img for img in images if analysis.analyse_cached(ctx, runner, img) is None]


def analyse_one(ctx: Context, runner: Runner, image: dict) -> dict:
    """{id, outcome, detail} of analysis.analyse on one image (no reader: a refusal stands, nothing else runs)."""
    image = {k: image[k] for k in ("id", "pixel_sha256", "file_sha256")}
    try:
        result = analysis.analyse(ctx, runner, image)
    except Exception as exc:  # one bad image (a file gone from the store) must not stop the night's run
        return {"id": image["id"], "outcome": "failed", "detail": f"{type(exc).__name__}: {exc}"}
    if result.withheld:
        return {"id": image["id"], "outcome": "refused_by_gate", "detail": "; ".join(result.gate["reasons"])}
    detail = ", ".join(result.computed_now)
    if result.unavailable:
        detail += f" (unavailable: {', '.join(sorted(result.unavailable))})"
    return {"id": image["id"], "outcome": "computed", "detail": detail}


def analyse_local(ctx: Context, runner: Runner, images: list[dict]) -> Iterator[tuple[int, str, str]]:
    for image in images:
        r = analyse_one(ctx, runner, image)
        yield r["id"], r["outcome"], r["detail"]


def counts(outcomes: Iterable[str]) -> dict[str, int]:
    c = Counter(outcomes)
    return {k: c.get(k, 0) for k in OUTCOMES}
