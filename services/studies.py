"""What the viewer page needs from a stored image, without Streamlit."""

from __future__ import annotations

from viewer import dicom_io, export, windowing


def display_png(img: dicom_io.DecodedImage, center: float | None, width: float | None, invert: bool) -> bytes:
    """The full-resolution 8-bit picture at a window (None: the header's default), as lossless PNG."""
    window = windowing.Window(center, width) if center is not None and width is not None else None
    return export.png_bytes(windowing.render(img, window, invert))


def value_range(img: dicom_io.DecodedImage) -> tuple[float, float]:
    """Smallest and largest modality value: the span a mouse window/level drag may cover."""
    values = windowing.modality_values(img)
    return float(values.min()), float(values.max())


class ReviewRefused(PermissionError):
    """A change of a study's review status the user may not make (nothing was written)."""


def set_reviewed(engine, study_id: int, actor, reviewed: bool) -> None:
    """Mark a study reviewed (radiologists and admins) or reopen it. A reviewed study is another reader's signed
    work: only the radiologist who marked it, or an admin, may reopen it. Checked here, on the server, whatever
    the page offers; each change is audited."""
    from db import audit, repo
    from db import engine as dbe
    from db.models import StudyStatus

    if actor.role not in ("radiologist", "admin"):
        raise ReviewRefused(f"a {actor.role} does not mark studies reviewed")

    def tx(s):
        study = repo.get_study(s, study_id)
        if study is None:
            raise LookupError(f"study {study_id} does not exist")
        if not reviewed and study.status == StudyStatus.reviewed and study.reviewed_by_id != actor.user_id:
            if actor.role != "admin":
                who = study.reviewed_by.username if study.reviewed_by else "another reader"
                raise ReviewRefused(f"{who} marked this study reviewed: only they or an admin may reopen it")
        repo.set_study_reviewed(s, study_id, actor.user_id, reviewed)
        audit.add(s, "study_reviewed" if reviewed else "study_reopened", actor_id=actor.user_id,
                  target=f"study {study_id}")  # fmt: skip

    dbe.write(engine, tx)


def may_reopen(actor, reviewed_by_id: int | None) -> bool:
    return actor.role == "admin" or (actor.role == "radiologist" and reviewed_by_id == actor.user_id)
