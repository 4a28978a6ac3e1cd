"""Repository functions: each takes a Session and never commits (the caller owns the transaction)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, and_, case, delete, func, or_, select, tuple_
from sqlalchemy.orm import Session, aliased

from db.models import (
    ActiveModel,
    ActiveModelEvent,
    Decision,
    Image,
    ModelThreshold,
    Prediction,
    Study,
    StudyStatus,
    User,
    Verdict,
    VerdictEvent,
    utcnow,
)


# --- studies and images --------------------------------------------------------------------------------------
def image_by_sop(s: Session, sop_instance_uid: str) -> Image | None:
    return s.scalar(select(Image).where(Image.sop_instance_uid == sop_instance_uid))


def image_by_pixel_hash(s: Session, pixel_sha256: str) -> Image | None:
    return s.scalar(select(Image).where(Image.pixel_sha256 == pixel_sha256).limit(1))


def stored_images(s: Session) -> list[tuple[int, str, str, str]]:
    """(id, file sha256, pixel sha256, original file name) of every stored image, by id."""
    rows = s.execute(
        select(Image.id, Image.file_sha256, Image.pixel_sha256, Image.original_filename).order_by(Image.id)
    )
    return [tuple(r) for r in rows]


def get_or_create_study(s: Session, study_instance_uid: str, **fields) -> Study:
    study = s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        study = Study(study_instance_uid=study_instance_uid, **fields)
        s.add(study)
        s.flush()
    return study


def add_image(s: Session, study: Study, **fields) -> Image:
    image = Image(study_id=study.id, **fields)
    s.add(image)
    s.flush()
    views = sorted({v for v in s.scalars(select(Image.view_position).where(Image.study_id == study.id)) if v})
    study.view_position = ",".join(views) or None
    study.modality = study.modality or image.modality
    return image


def get_study(s: Session, study_id: int) -> Study | None:
    return s.get(Study, study_id)


def study_images(s: Session, study_id: int) -> list[Image]:
    return list(s.scalars(select(Image).where(Image.study_id == study_id).order_by(Image.id)))


def open_study(s: Session, study_id: int) -> None:
    """A reader opened the study: new -> in_review."""
    study = s.get(Study, study_id)
    if study is not None and study.status == StudyStatus.new:
        study.status = StudyStatus.in_review


def set_study_reviewed(s: Session, study_id: int, user_id: int, reviewed: bool = True) -> None:
    study = s.get(Study, study_id)
    if study is None:
        raise LookupError(f"study {study_id} does not exist")
    if reviewed:
        study.status, study.reviewed_by_id, study.reviewed_at = StudyStatus.reviewed, user_id, utcnow()
    else:
        study.status, study.reviewed_by_id, study.reviewed_at = StudyStatus.in_review, None, None


# --- worklist ------------------------------------------------------------------------------------------------
SORT_COLUMNS = {
    "imported": Study.created_at,
    "study_date": Study.study_date,
    "age": Study.patient_age_years,
    "sex": Study.patient_sex,
    "view": Study.view_position,
    "status": Study.status,
    "patient_id": Study.patient_id,
}


@dataclass(frozen=True)
class WorklistFilter:
    status: tuple[str, ...] = ()
    sex: tuple[str, ...] = ()
    view: str | None = None  # substring of the study's views, e.g. "PA"
    text: str | None = None  # patient id, accession number or description
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    age_min: int | None = None
    age_max: int | None = None


@dataclass(frozen=True)
class WorklistRow:
    study_id: int
    patient_id: str | None
    patient_age_years: int | None
    patient_sex: str | None
    view_position: str | None
    modality: str | None
    study_date: dt.date | None
    study_description: str | None
    status: str
    reviewed_by: str | None
    images: int
    imported_at: dt.datetime
    has_prior: bool = False


def _filtered(f: WorklistFilter) -> Select:
    q = select(Study.id)
    if f.status:
        q = q.where(Study.status.in_([StudyStatus(x) for x in f.status]))
    if f.sex:
        q = q.where(Study.patient_sex.in_(f.sex))
    if f.view:
        q = q.where(Study.view_position.contains(f.view.upper(), autoescape=True))
    if f.text:
        # "_" and "%" typed by a user are literal characters, not wildcards.
        like = "%" + f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        q = q.where(
            Study.patient_id.ilike(like, escape="\\")
            | Study.accession_number.ilike(like, escape="\\")
            | Study.study_description.ilike(like, escape="\\")
        )
    if f.date_from:
        q = q.where(Study.study_date >= f.date_from)
    if f.date_to:
        q = q.where(Study.study_date <= f.date_to)
    if f.age_min is not None:
        q = q.where(Study.patient_age_years >= f.age_min)
    if f.age_max is not None:
        q = q.where(Study.patient_age_years <= f.age_max)
    return q


def _order_keys(sort: str, descending: bool) -> tuple:
    col = SORT_COLUMNS[sort]
    # Nulls last either way, then id as a stable tie-breaker so pages never overlap.
    key = col.desc().nulls_last() if descending else col.asc().nulls_last()
    return key, Study.id.desc() if descending else Study.id.asc()


def image_ids(s: Session, f: WorklistFilter) -> list[int]:
    """The ids of every image of the studies the worklist filter matches (a labelling task's images)."""
    return list(s.scalars(select(Image.id).where(Image.study_id.in_(_filtered(f))).order_by(Image.id)))


def list_studies(
    s: Session,
    f: WorklistFilter,
    sort: str = "imported",
    descending: bool = True,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[WorklistRow], int]:
    total = s.scalar(select(func.count()).select_from(_filtered(f).subquery())) or 0
    ids = list(s.scalars(_filtered(f).order_by(*_order_keys(sort, descending)).offset(offset).limit(limit)))
    if not ids:
        return [], total
    reviewer, prior = aliased(User), aliased(Study)
    n_images = select(func.count(Image.id)).where(Image.study_id == Study.id).scalar_subquery()
    has_prior = select(prior.id).where(_is_prior(prior, Study)).exists()
    rows = s.execute(
        select(Study, reviewer.username, n_images, has_prior)
        .outerjoin(reviewer, Study.reviewed_by_id == reviewer.id)
        .where(Study.id.in_(ids))
    ).all()
    by_id = {st.id: (st, who, n, p) for st, who, n, p in rows}
    out = []
    for sid in ids:
        st, who, n, p = by_id[sid]
        out.append(
            WorklistRow(
                study_id=st.id,
                patient_id=st.patient_id,
                patient_age_years=st.patient_age_years,
                patient_sex=st.patient_sex,
                view_position=st.view_position,
                modality=st.modality,
                study_date=st.study_date,
                study_description=st.study_description,
                status=st.status.value,
                reviewed_by=who,
                images=n,
                imported_at=st.created_at,
                has_prior=bool(p),
            )
        )
    return out, total


# Patient IDs that name nobody: what anonymisers and exports write where the real one was removed. Ids of only
# zeros (or empty) are caught separately.
PLACEHOLDER_PATIENT_IDS = ("ANON", "ANONYMOUS", "ANONYMIZED", "ANONYMISED", "UNKNOWN", "NONE", "NULL", "N/A", "NA",
                           "-", "?", "X", "XXX", "XXXX", "NO ID", "NOID", "UNK", "TEST", "PATIENT")  # fmt: skip


def _named(study):
    """A Patient ID that names one person: present, not blank, not all zeros, not a placeholder."""
    pid = func.upper(func.trim(study.patient_id))
    return study.patient_id.is_not(None) & (func.ltrim(pid, "0") != "") & pid.not_in(PLACEHOLDER_PATIENT_IDS)


def _same_patient(other, study):
    """Studies of one patient: the same named Patient ID from the same issuer, never without one (a bare id such
    as NIH's "75" is another data set's "75" too), and no sex disagreeing where both record it."""
    return (
        (other.patient_id == study.patient_id)
        & _named(study)
        & study.issuer_of_patient_id.is_not(None)
        & (func.trim(study.issuer_of_patient_id) != "")
        & (other.issuer_of_patient_id == study.issuer_of_patient_id)
        & or_(other.patient_sex.is_(None), study.patient_sex.is_(None), other.patient_sex == study.patient_sex)
        & (other.id != study.id)
    )


def _is_prior(other, study):
    """`other` is a prior of `study`: the same patient, dated strictly earlier (undated studies are never
    ordered, so they are never priors, nor have any)."""
    return _same_patient(other, study) & (other.study_date < study.study_date)


def patient_studies(s: Session, study_id: int) -> list[Study]:
    """The other studies of this study's patient, newest first (undated last); none without a named Patient ID
    and an issuer (see _same_patient)."""
    other, this = aliased(Study), aliased(Study)
    q = (
        select(other)
        .join(this, _same_patient(other, this))
        .where(this.id == study_id, this.patient_id.is_not(None))
        .order_by(other.study_date.desc().nulls_last(), other.id.desc())
    )
    return list(s.scalars(q))


def prior_study(s: Session, study_id: int) -> Study | None:
    """The latest study of the same patient dated before this one, or None."""
    other, this = aliased(Study), aliased(Study)
    q = (
        select(other)
        .join(this, _is_prior(other, this))
        .where(this.id == study_id)
        .order_by(other.study_date.desc(), other.id.desc())
        .limit(1)
    )
    return s.scalar(q)


def neighbour_study(
    s: Session, study_id: int, f: WorklistFilter, sort: str, descending: bool, step: int = 1
) -> int | None:
    """The study after (step=1) or before (step=-1) study_id in the worklist's order."""
    pos_col = func.row_number().over(order_by=_order_keys(sort, descending)).label("pos")
    sub = _filtered(f).add_columns(pos_col).subquery()
    pos = s.scalar(select(sub.c.pos).where(sub.c.id == study_id))
    if pos is None:
        return None
    return s.scalar(select(sub.c.id).where(sub.c.pos == pos + step))


# --- AI predictions ----------------------------------------------------------------------------------------------
def get_prediction(
    s: Session, pixel_sha256: str, model_id: str, version: str, weights_sha256: str
) -> Prediction | None:
    return s.scalar(
        select(Prediction).where(
            Prediction.pixel_sha256 == pixel_sha256,
            Prediction.model_id == model_id,
            Prediction.model_version == version,
            Prediction.weights_sha256 == weights_sha256,
        )
    )


def get_predictions(
    s: Session, pixel_sha256: str, refs: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], Prediction]:
    """The stored predictions on these pixels of each (model id, version, weights sha256) in `refs` that has
    one, in one query."""
    if not refs:
        return {}
    ref = tuple_(Prediction.model_id, Prediction.model_version, Prediction.weights_sha256)
    rows = s.scalars(select(Prediction).where(Prediction.pixel_sha256 == pixel_sha256, ref.in_(refs)))
    return {(r.model_id, r.model_version, r.weights_sha256): r for r in rows}


def add_prediction(s: Session, **fields) -> Prediction:
    """Insert, or return the row another reader stored first for the same pixels and model version."""
    existing = get_prediction(
        s, fields["pixel_sha256"], fields["model_id"], fields["model_version"], fields["weights_sha256"]
    )
    if existing is not None:
        return existing
    row = Prediction(**fields)
    s.add(row)
    s.flush()
    return row


def thresholds(s: Session, model_id: str, version: str) -> dict[str, float]:
    rows = s.scalars(
        select(ModelThreshold).where(
            ModelThreshold.model_id == model_id, ModelThreshold.model_version == version
        )
    )
    return {r.label: r.threshold for r in rows}


def set_threshold(
    s: Session, model_id: str, version: str, label: str, threshold: float, user_id: int
) -> None:
    row = s.scalar(
        select(ModelThreshold).where(
            ModelThreshold.model_id == model_id,
            ModelThreshold.model_version == version,
            ModelThreshold.label == label,
        )
    )
    if row is None:
        row = ModelThreshold(model_id=model_id, model_version=version, label=label, threshold=threshold)
        s.add(row)
    row.threshold, row.updated_by_id, row.updated_at = threshold, user_id, utcnow()


def reset_thresholds(s: Session, model_id: str, version: str) -> int:
    """Drop the edited thresholds of a model version (its defaults apply again); returns how many there were."""
    result = s.execute(
        delete(ModelThreshold).where(
            ModelThreshold.model_id == model_id, ModelThreshold.model_version == version
        )
    )
    return result.rowcount


# --- active model per task ------------------------------------------------------------------------------------
def active_model(s: Session, task: str) -> ActiveModel | None:
    """The version an admin chose for `task`, or None (the registry's default runs)."""
    return s.get(ActiveModel, task)


def active_models(s: Session) -> dict[str, ActiveModel]:
    return {row.task: row for row in s.scalars(select(ActiveModel))}


def set_active_model(
    s: Session, task: str, model_id: str, version: str, weights_sha256: str, user_id: int
) -> ActiveModel:
    """Upsert the choice for `task` and append its audit event (the caller's transaction holds both)."""
    row = s.get(ActiveModel, task)
    if row is None:
        row = ActiveModel(task=task)
        s.add(row)
    row.model_id, row.model_version, row.weights_sha256 = model_id, version, weights_sha256
    row.set_by_id, row.set_at = user_id, utcnow()
    s.add(
        ActiveModelEvent(
            task=task, model_id=model_id, model_version=version, weights_sha256=weights_sha256,
            set_by_id=user_id, at=row.set_at,
        )
    )  # fmt: skip
    s.flush()
    return row


def clear_active_model(s: Session, task: str, user_id: int) -> None:
    """Back to the registry's default for `task`; recorded as an event without a model."""
    row = s.get(ActiveModel, task)
    if row is not None:
        s.delete(row)
    s.add(
        ActiveModelEvent(task=task, model_id=None, model_version=None, weights_sha256=None, set_by_id=user_id)
    )
    s.flush()


def active_model_history(s: Session, task: str) -> list[ActiveModelEvent]:
    """Every choice made for `task`, newest first."""
    return list(
        s.scalars(
            select(ActiveModelEvent).where(ActiveModelEvent.task == task).order_by(ActiveModelEvent.id.desc())
        )
    )


def rollback_active_model(
    s: Session, task: str, user_id: int, history: list[ActiveModelEvent] | None = None
) -> ActiveModelEvent | None:
    """Restore the choice made before the current one (the registry's default when there was none); the
    rollback is itself a new event. Returns the event restored, or None when there is nothing to roll back.
    `history`: the task's history as read in this transaction, when the caller has it already."""
    history = active_model_history(s, task) if history is None else history
    if not history:
        return None
    previous = history[1] if len(history) > 1 else None
    if previous is None or previous.model_id is None:
        clear_active_model(s, task, user_id)
    else:
        set_active_model(s, task, previous.model_id, previous.model_version, previous.weights_sha256, user_id)
    return previous


# --- verdicts ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerdictIn:
    study_id: int
    image_id: int
    reader_id: int
    item_kind: str
    item_key: str
    decision: str
    model_id: str
    model_version: str
    weights_sha256: str
    reason_code: str | None = None
    reason_text: str | None = None
    prediction_item_id: int | None = None  # the stored item judged; None where the caller has none


def find_verdict(
    s: Session,
    image_id: int,
    reader_id: int,
    item_kind: str,
    item_key: str,
    model_id: str,
    model_version: str,
    prediction_item_id: int | None = None,
) -> Verdict | None:
    """The reader's verdict on one item, or None: the one that points at `prediction_item_id` when given, else
    the one with the item's natural key (a verdict written before items were stored has no item id), in one
    query. The natural key stays unique, so a row with it is the row to update whatever item it points at."""
    natural = and_(
        Verdict.item_kind == item_kind,
        Verdict.item_key == item_key,
        Verdict.model_id == model_id,
        Verdict.model_version == model_version,
    )
    q = select(Verdict).where(Verdict.image_id == image_id, Verdict.reader_id == reader_id)
    if prediction_item_id is None:
        return s.scalar(q.where(natural))
    by_item = Verdict.prediction_item_id == prediction_item_id
    return s.scalar(q.where(or_(by_item, natural)).order_by(case((by_item, 0), else_=1)).limit(1))


def upsert_verdict(s: Session, v: VerdictIn) -> Verdict:
    """One verdict per reader and item (found by its item id, else its natural key), and an append-only event
    for every write. A verdict written before items were stored gets the item id when it is written again."""
    row = find_verdict(
        s, v.image_id, v.reader_id, v.item_kind, v.item_key, v.model_id, v.model_version, v.prediction_item_id
    )
    decision = Decision(v.decision)
    if row is None:
        row = Verdict(
            study_id=v.study_id,
            image_id=v.image_id,
            reader_id=v.reader_id,
            item_kind=v.item_kind,
            item_key=v.item_key,
            model_id=v.model_id,
            model_version=v.model_version,
            weights_sha256=v.weights_sha256,
            decision=decision,
        )
        s.add(row)
    row.decision, row.reason_code, row.reason_text = decision, v.reason_code, v.reason_text
    row.weights_sha256, row.updated_at = v.weights_sha256, utcnow()
    if v.prediction_item_id is not None:
        row.prediction_item_id = v.prediction_item_id
    s.flush()
    s.add(
        VerdictEvent(
            verdict_id=row.id,
            reader_id=v.reader_id,
            decision=decision,
            reason_code=v.reason_code,
            reason_text=v.reason_text,
            model_id=v.model_id,
            model_version=v.model_version,
            weights_sha256=v.weights_sha256,
        )
    )
    return row


def verdicts_of(s: Session, image_id: int, reader_id: int) -> list[Verdict]:
    return list(
        s.scalars(
            select(Verdict)
            .where(Verdict.image_id == image_id, Verdict.reader_id == reader_id)
            .order_by(Verdict.id)
        )
    )


def verdict_events(s: Session, verdict_id: int) -> list[VerdictEvent]:
    return list(
        s.scalars(select(VerdictEvent).where(VerdictEvent.verdict_id == verdict_id).order_by(VerdictEvent.id))
    )


def verdicts_on_image(s: Session, image_id: int) -> list[tuple[Verdict, str]]:
    """Every reader's current verdicts on an image, with the reader's name, newest first."""
    return list(
        s.execute(
            select(Verdict, User.username)
            .join(User, User.id == Verdict.reader_id)
            .where(Verdict.image_id == image_id)
            .order_by(Verdict.updated_at.desc(), Verdict.id.desc())
        ).tuples()
    )
